// The Function app on Flex Consumption: Python 3.11, user-assigned identity for everything
// (storage, Key Vault references, App Insights, deployment package), no keys or passwords.
param name string
param location string = resourceGroup().location
param tags object = {}
param serviceName string = 'api'
param appServicePlanId string
param applicationInsightsName string
param storageAccountName string
param deploymentContainerName string
@description('Resource id of the user-assigned managed identity.')
param identityId string
@description('Client id of the user-assigned managed identity.')
param identityClientId string
@description('Subnet of the app\'s outbound VNet integration (app/network.bicep): the Key Vault firewall admits it.')
param virtualNetworkSubnetId string
@description('The app\'s own settings (main.bicep `var appSettings`).')
param appSettings object
param runtimeName string = 'python'
param runtimeVersion string = '3.11'
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 100

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Settings the platform reads, not our code (except the storage URIs and client id, which
// shared/settings.py reads for its own tables and queues). On Flex Consumption the runtime is
// `functionAppConfig.runtime`: FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are refused.
// tests/infra/test_settings_drift.py parses this block: keep it flat, one entry per line.
var platformSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storageAccount.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storageAccount.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storageAccount.properties.primaryEndpoints.table
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // With host.json telemetryMode=OpenTelemetry: the Python worker configures azure-monitor-opentelemetry
  // itself, so logs and traces from our code share one trace with the host's.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

module functionApp 'br/public:avm/res/web/site:0.15.1' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: appServicePlanId
    httpsOnly: true
    clientAffinityEnabled: false
    managedIdentities: {
      systemAssigned: false
      userAssignedResourceIds: [
        identityId
      ]
    }
    // Without this the platform resolves Key Vault references with a system-assigned identity,
    // which does not exist here, and the settings stay unresolved literal strings.
    keyVaultAccessIdentityResourceId: identityId
    // Outbound through the VNet, so Key Vault references reach a vault whose firewall denies the
    // internet; on Flex Consumption the platform routes that traffic without vnetRouteAllEnabled.
    virtualNetworkSubnetId: virtualNetworkSubnetId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: runtimeName
        version: runtimeVersion
      }
    }
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    // Deployments (azd) authenticate with Entra ID; publishing passwords stay off.
    basicPublishingCredentialsPolicies: [
      {
        name: 'ftp'
        allow: false
      }
      {
        name: 'scm'
        allow: false
      }
    ]
    appSettingsKeyValuePairs: union(appSettings, platformSettings)
  }
}

output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = 'https://${functionApp.outputs.defaultHostname}'
