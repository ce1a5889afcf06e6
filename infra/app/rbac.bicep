// Least-privilege data-plane roles: the app's managed identity always; the deploying person or
// pipeline optionally (for `python -m shared partner-center login` and `doctor` from their machine,
// and to set the Key Vault secrets). Role ids are built-in and the same in every tenant.
param storageAccountName string
param appInsightsName string
param keyVaultName string
@description('Principal (object) id of the app\'s user-assigned managed identity.')
param appPrincipalId string
@description('Principal (object) id of the deployer; empty = no roles for the deployer.')
param deployerPrincipalId string = ''
@allowed([
  'User'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Flex deployment package, host locks, timer state
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // `sync` and `sync-poison`
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // state tables and the token cache
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // resolve Key Vault references (read only)
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // set secret values (deployer only)
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // App Insights ingestion with Entra auth
}

var appPrincipal = [
  {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
]
var deployerPrincipal = empty(deployerPrincipalId)
  ? []
  : [
      {
        principalId: deployerPrincipalId
        principalType: deployerPrincipalType
      }
    ]
var everyone = concat(appPrincipal, deployerPrincipal)

var storageAssignments = concat(
  map(everyone, principal => union(principal, { roleId: roles.storageBlobDataOwner })),
  map(everyone, principal => union(principal, { roleId: roles.storageQueueDataContributor })),
  map(everyone, principal => union(principal, { roleId: roles.storageTableDataContributor }))
)
var keyVaultAssignments = concat(
  map(appPrincipal, principal => union(principal, { roleId: roles.keyVaultSecretsUser })),
  map(deployerPrincipal, principal => union(principal, { roleId: roles.keyVaultSecretsOfficer }))
)
var monitoringAssignments = map(everyone, principal => union(principal, { roleId: roles.monitoringMetricsPublisher }))

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for assignment in storageAssignments: {
    name: guid(storageAccount.id, assignment.principalId, assignment.roleId)
    scope: storageAccount
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', assignment.roleId)
      principalId: assignment.principalId
      principalType: assignment.principalType
    }
  }
]

resource keyVaultRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for assignment in keyVaultAssignments: {
    name: guid(keyVault.id, assignment.principalId, assignment.roleId)
    scope: keyVault
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', assignment.roleId)
      principalId: assignment.principalId
      principalType: assignment.principalType
    }
  }
]

resource monitoringRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for assignment in monitoringAssignments: {
    name: guid(applicationInsights.id, assignment.principalId, assignment.roleId)
    scope: applicationInsights
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', assignment.roleId)
      principalId: assignment.principalId
      principalType: assignment.principalType
    }
  }
]
