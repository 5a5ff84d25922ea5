"""The bottom layer: errors, registries, option declarations, seeding, OmegaConf resolvers, tables.

Nothing here imports any other part of ssl_cli.
"""
