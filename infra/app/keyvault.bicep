// Key Vault for the third-party secrets (Partner Center app secret, token-cache key, CRM secrets).
// RBAC mode: access is granted by role assignments (app/rbac.bicep), never by access policies.
// Secret values are set out of band (docs/deploy.md); the app sees them through Key Vault references.
// Network: the firewall denies by default and admits the Function app's subnet (app/network.bicep,
// service endpoint) and the admins' IP addresses; why not a private endpoint: infra/README.md.
param name string
param location string = resourceGroup().location
param tags object = {}

@description('Purge protection cannot be switched off again once on; false leaves it unset.')
param purgeProtection bool = true

@description('Subnets the firewall admits: the Function app\'s VNet integration subnet (with the Microsoft.KeyVault service endpoint).')
param allowedSubnetIds array

@description('Public IP addresses or CIDR ranges the firewall admits: the admins who set secrets and run the admin commands. Empty = nobody from the internet.')
param allowedIpRanges array = []

@description('Log Analytics workspace that receives the vault audit log (who read or changed which secret).')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_110: purge protection is on unless a throw-away staging environment turns it off (KEY_VAULT_PURGE_PROTECTION=false) for `azd down --purge`; tests/infra checks the default stays true
  // checkov:skip=CKV_AZURE_42: recoverable = soft delete (always on, 90 days) + purge protection (see CKV_AZURE_110)
  // checkov:skip=CKV_AZURE_189: the public endpoint stays for the admins' machines, but the firewall denies everyone except the app's subnet and the listed admin IPs (a private endpoint would lock the admin commands out; infra/README.md)
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
      defaultAction: 'Deny'
      // No trusted-service exception: App Service is trusted only for certificate deployment, not for
      // Key Vault references, and nothing else needs the vault.
      bypass: 'None'
      virtualNetworkRules: [
        for subnetId in allowedSubnetIds: {
          id: subnetId
          ignoreMissingVnetServiceEndpoint: false
        }
      ]
      ipRules: [
        for ipRange in allowedIpRanges: {
          value: ipRange
        }
      ]
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
