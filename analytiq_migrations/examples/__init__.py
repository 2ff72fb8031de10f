"""Example migrations: the original guide's examples, made correct.

``python -m analytiq_migrations.demo`` applies them to a throw-away server.
"""
