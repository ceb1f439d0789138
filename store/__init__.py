"""The bottom layer: SQL tables, the engine factory and the decision-log writer.

Every layer may import `store`; `store` imports nothing of ours, so no package reaches up into
`gateway/` for a table. Alembic migrations (migrations/) describe how the tables came to be."""
