"""Sandbox-only identities and ports: the values local.settings.sample.json uses (never real secrets).

One module so the simulators, the local host, `make run`, tests and benchmarks agree.
"""

from __future__ import annotations

# Stable sandbox ports (ARCHITECTURE.md "Sandbox"); tests use free ports instead.
HOST_PORT = 7071
IDENTITY_PORT = 7100
PARTNER_CENTER_PORT = 7101
SALESFORCE_PORT = 7102
DATAVERSE_PORT = 7103

TENANT_ID = "sandbox-tenant"

# Entra app registrations the identity simulator knows: client id -> client secret.
PC_CLIENT_ID = "sandbox-pc-client"
PC_CLIENT_SECRET = "sandbox-pc-secret"
DATAVERSE_CLIENT_ID = "sandbox-dataverse-client"
DATAVERSE_CLIENT_SECRET = "sandbox-dataverse-secret"
IDENTITY_CLIENTS = {PC_CLIENT_ID: PC_CLIENT_SECRET, DATAVERSE_CLIENT_ID: DATAVERSE_CLIENT_SECRET}

# The Partner Center "Referrals Admin" who signs in with the device code flow.
PC_ADMIN_USER = "referrals.admin@sandbox.example"

# Salesforce connected app and integration user.
SALESFORCE_CLIENT_ID = "sandbox-sf-client"
SALESFORCE_CLIENT_SECRET = "sandbox-sf-secret"
SALESFORCE_USERNAME = "integration@sandbox.example"
SALESFORCE_PASSWORD = "sandbox-sf-password"
SALESFORCE_SECURITY_TOKEN = "sandbox-sf-token"

# Function key the local host accepts for function-level routes (SANDBOX_FUNCTION_KEY).
FUNCTION_KEY = "sandbox-function-key"

# Token cache encryption key for the sandbox (URL-safe base64 of 32 bytes).
TOKEN_CACHE_KEY = "c2FuZGJveC10b2tlbi1jYWNoZS1rZXktMzItYnl0ZXM="
