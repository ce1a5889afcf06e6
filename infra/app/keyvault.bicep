// Key Vault for the third-party secrets (Partner Center app secret, token-cache key, CRM secrets).
// RBAC mode: access is granted by role assignments (app/rbac.bicep), never by access policies.
// Secret values are set out of band (docs/deploy.md); the app sees them through Key Vault references.
param name string
param location string = resourceGroup().location
param tags object = {}

@description('Purge protection cannot be switched off again once on; false leaves it unset.')
param purgeProtection bool = true

@description('Log Analytics workspace that receives the vault audit log (who read or changed which secret).')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // The platform accepts only true or null here: false is rejected.
    enablePurgeProtection: purgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
@description('Vault URI with a trailing slash, e.g. https://kv-abc.vault.azure.net/')
output uri string = vault.properties.vaultUri
