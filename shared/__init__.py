"""Co-sell Sync: keeps Partner Center co-sell referrals in two-way sync with Salesforce and Dynamics 365.

This package is framework-free: it never imports `azure.functions`; `function_app.py` does.
"""

# The one place the version is defined: /api/health reports it, pyproject.toml reads it, and
# CHANGELOG.md's latest release must name it (tests/test_version.py). Semantic versioning.
__version__ = "0.1.0"
