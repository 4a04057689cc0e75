"""Errors that are the user's to fix: printed as one clear line, never as a traceback."""


class AgirError(Exception):
    """A problem with input or configuration: what, where, what to do — in one line."""


class ConfigError(AgirError):
    """Invalid configuration (unknown key, wrong type, bad override)."""
