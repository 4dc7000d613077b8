"""confguard: invite an extension into a FreeSWITCH conference with key-press confirmation.

The package root only names the version; every module owns one job (see README, "Layout").
"""

__version__ = "0.1.0"
