// A resource checkov must fail: proves tests/infra/test_checkov.py notices a new Bicep file whose
// resource does not pass. Never deployed (only infra/ is), scanned by that test alone.
param location string = resourceGroup().location

resource unsafeVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-unsafe-example'
  location: location
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}
