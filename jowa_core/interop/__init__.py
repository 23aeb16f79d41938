"""Interoperability with other implementations: importing the official JOWA checkpoints."""
