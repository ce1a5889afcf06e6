// The Function app's virtual network. Its only job: give the app's outbound traffic an address the
// Key Vault firewall can admit (app/keyvault.bicep). Key Vault references are resolved from the
// app's network, and App Service is not a "trusted Azure service" for them, so without this subnet
// a vault that denies by default could not serve the app's secrets. Nothing listens in here; storage,
// Partner Center and the CRMs are still reached over the internet.
param name string
param location string = resourceGroup().location
param tags object = {}

@description('Address space of the virtual network; change it only if it must not overlap a network you peer with.')
param addressPrefix string = '10.80.0.0/24'

@description('Subnet of the app\'s VNet integration, inside addressPrefix: each instance takes an address, so /25 (123 usable) covers maximumInstanceCount = 100 of app/api.bicep.')
param appSubnetPrefix string = '10.80.0.0/25'

// No inbound rules of our own: the defaults deny inbound from the internet. Outbound stays open
// (Partner Center, Salesforce, Dataverse, Entra ID and storage are public endpoints).
resource appSubnetNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: 'nsg-${name}-app'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          networkSecurityGroup: {
            id: appSubnetNsg.id
          }
          // Flex Consumption's VNet integration needs a subnet delegated to Microsoft.App/environments.
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          // Traffic to Key Vault leaves with this subnet's identity, which the vault firewall admits.
          serviceEndpoints: [
            {
              service: 'Microsoft.KeyVault'
            }
          ]
        }
      }
    ]
  }
}

@description('Resource id of the app subnet (VNet integration of the Function app; admitted by the Key Vault firewall).')
output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'app')
