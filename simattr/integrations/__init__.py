"""Integrations with the engines large jobs run on (each imports its engine only when used; `import simattr`
imports none of them): `simattr.integrations.ray` (Ray Data)."""
