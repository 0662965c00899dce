"""Teichaku (定着): post-employment retention follow-up for employment-support offices."""

__version__ = "0.1.0"
