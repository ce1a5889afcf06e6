"""Co-sell Sync: keeps Partner Center co-sell referrals in two-way sync with Salesforce and Dynamics 365.

This package is framework-free: it never imports `azure.functions`; `function_app.py` does.
"""

__version__ = "0.1.0"
