// Co-sell Sync in the partner's own subscription: `azd up` provisions this, then deploys the app.
// Shape follows the Azure Functions azd quickstarts (Flex Consumption, user-assigned identity, no
// storage keys); our additions are Key Vault references for the third-party secrets and every app
// setting the code reads. Check it where the Bicep CLI exists: `az bicep build --file infra/main.bicep`.
targetScope = 'subscription'

// ---- Deployment ------------------------------------------------------------------------------------
@minLength(1)
@maxLength(64)
@description('Name of the azd environment (e.g. cosell-staging); seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Azure region of every resource. It must offer Flex Consumption: `az functionapp list-flexconsumption-locations`.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person (or pipeline) deploying. Gets data access to storage and may set Key Vault secrets, for `python -m shared partner-center login` and `doctor` from their machine.')
param principalId string = deployer().objectId

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Kind of principal in principalId.')
param principalType string = 'User'

@description('Give principalId the data roles above. Turn off in production once the sign-in is done (existing assignments stay until deleted).')
param grantDeployerAccess bool = true

@description('Key Vault purge protection: a deleted vault cannot be purged for 90 days. Recommended for production; a staging environment may turn it off so `azd down --purge` can remove it.')
param keyVaultPurgeProtection bool = true

@description('Comma-separated public IP addresses or CIDR ranges of the admins allowed through the Key Vault firewall (to set secrets and run the admin commands). Empty = none; the app itself is admitted by its subnet.')
param keyVaultAllowedIps string = ''

@description('Optional resource group name; default rg-<environmentName>.')
param resourceGroupName string = ''

// ---- App settings that are parameters (set with `azd env set <SETTING> <value>`, then `azd provision`) ----
@allowed([
  'salesforce'
  'dynamics'
])
@description('CRM_KIND: which CRM this deployment syncs with.')
param crmKind string

@description('PC_TENANT_ID: Entra tenant of the partner organisation (default: the tenant deployed into).')
param pcTenantId string = tenant().tenantId

@minLength(1)
@description('PC_CLIENT_ID: application (client) id of the app registration with delegated Partner Center permissions.')
param pcClientId string

@description('SHOW_SYNC_MARK_IN_NAME: append a sync mark to CRM record names (true or false).')
param showSyncMarkInName string = 'true'

@description('SYNC_COSELL_ONLY: only co-sell and pipeline referrals go Partner Center -> CRM (true or false).')
param syncCosellOnly string = 'false'

@description('ACCEPT_COUNTRY_NAMES: translate unambiguous account country names (Germany) to ISO codes (true or false).')
param acceptCountryNames string = 'false'

@description('PC_REFERRAL_LINK_TEMPLATE: deep link written to the Referral Link field; {id} = referral id.')
param pcReferralLinkTemplate string = 'https://partner.microsoft.com/dashboard/referrals/v2/opportunities/{id}'

@description('CRM_DEAL_VALUE_FIELD: CRM deal value field; empty = Amount (Salesforce) / estimatedvalue (Dynamics).')
param crmDealValueField string = ''

@description('CRM_DEAL_CURRENCY_FIELD: CRM deal currency field; empty = CurrencyIsoCode / transactioncurrencyid.')
param crmDealCurrencyField string = ''

@description('CRM_ACCOUNT_COUNTRY_FIELD: CRM account country field; empty = BillingCountry / address1_country.')
param crmAccountCountryField string = ''

@description('SALESFORCE_PENDING_STAGE: stage holding referrals from Microsoft until accepted.')
param salesforcePendingStage string = 'Prospecting'

@description('SALESFORCE_ACTIVE_STAGE: stage set when a referral is accepted.')
param salesforceActiveStage string = 'Qualification'

@description('SALESFORCE_WON_STAGE: stage written when Partner Center closes a referral as won.')
param salesforceWonStage string = 'Closed Won'

@description('SALESFORCE_LOST_STAGE: stage written when Partner Center closes a referral as lost.')
param salesforceLostStage string = 'Closed Lost'

@description('CRM_POLL_SCHEDULE: NCRONTAB (six fields, seconds first) of the CRM poll.')
param crmPollSchedule string = '0 */1 * * * *'

@description('PC_RECONCILE_SCHEDULE: NCRONTAB of the Partner Center reconcile poll.')
param pcReconcileSchedule string = '0 */15 * * * *'

@description('PC_TOKEN_REFRESH_SCHEDULE: NCRONTAB of the Partner Center sign-in refresh.')
param pcTokenRefreshSchedule string = '0 0 3 * * *'

@allowed([
  'client_credentials'
  'jwt'
  'password'
])
@description('SALESFORCE_AUTH: how the app signs in to Salesforce; decides which Salesforce secrets are referenced.')
param salesforceAuth string = 'client_credentials'

@description('SALESFORCE_LOGIN_URL: your My Domain URL (client credentials), or https://test.salesforce.com for sandbox orgs.')
param salesforceLoginUrl string = 'https://login.salesforce.com'

@description('SALESFORCE_API_VERSION: Salesforce REST API version.')
param salesforceApiVersion string = '62.0'

@description('SALESFORCE_CLIENT_ID: consumer key of the connected app (client credentials and JWT).')
param salesforceClientId string = ''

@description('SALESFORCE_USERNAME: integration user (JWT and password sign-in).')
param salesforceUsername string = ''

@description('DATAVERSE_URL: Dataverse environment URL, e.g. https://contoso.crm4.dynamics.com.')
param dataverseUrl string = ''

@description('DATAVERSE_TENANT_ID: tenant of the Dataverse application user (default: the tenant deployed into).')
param dataverseTenantId string = tenant().tenantId

@description('DATAVERSE_CLIENT_ID: application (client) id of the Dataverse application user.')
param dataverseClientId string = ''

@description('DATAVERSE_CHANGE_TRACKING: poll Dataverse with change tracking instead of modifiedon (true or false).')
param dataverseChangeTracking string = 'false'

// ---- Names -------------------------------------------------------------------------------------------
var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}cosell-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'
var isSalesforce = crmKind == 'salesforce'

// Queues and tables the app uses (shared/sync/queues.py `*_QUEUE`, shared/ `*_TABLE` constants).
// Declared so a deploy never depends on create-on-first-use; tests/infra reads both lists.
var queueNames = [
  'sync'
  'sync-poison'
]
var tableNames = [
  'links'
  'watermarks'
  'audit'
  'deadletters'
  'tokencache'
]
var queues = [for queueName in queueNames: { name: queueName }]
var tables = [for tableName in tableNames: { name: tableName }]

// `@Microsoft.KeyVault(...)` reference to a secret's latest version, resolved by the platform with
// the site's keyVaultReferenceIdentity; the value is set out of band (docs/deploy.md), never here.
func keyVaultReference(vaultUri string, secretName string) string => '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${secretName}/)'

// ---- App settings: one `NAME: value` line per setting of shared/settings.py --------------------------
// Identity-based storage and monitoring settings live in app/api.bicep (`var platformSettings`).
// tests/infra/test_settings_drift.py parses this block: keep it flat, one entry per line.
var appSettings = {
  // Core
  CRM_KIND: crmKind
  TLS_CA_BUNDLE: '' // sandbox only; empty = the system trust store
  AZURE_CLIENT_ID: apiIdentity.outputs.clientId // DefaultAzureCredential picks the user-assigned identity
  // Sync rules
  SHOW_SYNC_MARK_IN_NAME: showSyncMarkInName
  SYNC_COSELL_ONLY: syncCosellOnly
  ACCEPT_COUNTRY_NAMES: acceptCountryNames
  PC_REFERRAL_LINK_TEMPLATE: pcReferralLinkTemplate
  CRM_DEAL_VALUE_FIELD: crmDealValueField
  CRM_DEAL_CURRENCY_FIELD: crmDealCurrencyField
  CRM_ACCOUNT_COUNTRY_FIELD: crmAccountCountryField
  SALESFORCE_PENDING_STAGE: salesforcePendingStage
  SALESFORCE_ACTIVE_STAGE: salesforceActiveStage
  SALESFORCE_WON_STAGE: salesforceWonStage
  SALESFORCE_LOST_STAGE: salesforceLostStage
  // Schedules (also read by the host for the timer triggers: never leave them empty)
  CRM_POLL_SCHEDULE: crmPollSchedule
  PC_RECONCILE_SCHEDULE: pcReconcileSchedule
  PC_TOKEN_REFRESH_SCHEDULE: pcTokenRefreshSchedule
  // Partner Center
  PC_TENANT_ID: pcTenantId
  PC_CLIENT_ID: pcClientId
  PC_CLIENT_SECRET: keyVaultReference(keyVault.outputs.uri, 'pc-client-secret')
  PC_TOKEN_CACHE_KEY: keyVaultReference(keyVault.outputs.uri, 'pc-token-cache-key')
  PC_AUTHORITY_HOST: 'https://login.microsoftonline.com'
  PC_API_BASE_URL: 'https://api.partner.microsoft.com/v1.0/engagements'
  PC_API_SCOPE: 'https://api.partner.microsoft.com/.default'
  PC_WEBHOOK_API_BASE_URL: 'https://api.partnercenter.microsoft.com/webhooks/v1'
  PC_WEBHOOK_API_SCOPE: 'https://api.partnercenter.microsoft.com/.default'
  PC_WEBHOOK_CERT_HOSTS: '3psostorageacct.blob.core.windows.net'
  PC_WEBHOOK_TRUSTED_ROOTS: '' // empty = the system trust store
  PC_HTTP_TIMEOUT_SECONDS: '30'
  // Salesforce (secrets referenced only for the chosen CRM and sign-in, so no dangling references)
  SALESFORCE_AUTH: salesforceAuth
  SALESFORCE_LOGIN_URL: salesforceLoginUrl
  SALESFORCE_API_VERSION: salesforceApiVersion
  SALESFORCE_CLIENT_ID: salesforceClientId
  SALESFORCE_CLIENT_SECRET: isSalesforce && salesforceAuth == 'client_credentials' ? keyVaultReference(keyVault.outputs.uri, 'salesforce-client-secret') : ''
  SALESFORCE_USERNAME: salesforceUsername
  SALESFORCE_PASSWORD: isSalesforce && salesforceAuth == 'password' ? keyVaultReference(keyVault.outputs.uri, 'salesforce-password') : ''
  SALESFORCE_SECURITY_TOKEN: isSalesforce && salesforceAuth == 'password' ? keyVaultReference(keyVault.outputs.uri, 'salesforce-security-token') : ''
  SALESFORCE_PRIVATE_KEY: isSalesforce && salesforceAuth == 'jwt' ? keyVaultReference(keyVault.outputs.uri, 'salesforce-private-key') : ''
  // Dynamics 365 (Dataverse)
  DATAVERSE_URL: dataverseUrl
  DATAVERSE_TENANT_ID: dataverseTenantId
  DATAVERSE_CLIENT_ID: dataverseClientId
  DATAVERSE_CLIENT_SECRET: crmKind == 'dynamics' ? keyVaultReference(keyVault.outputs.uri, 'dataverse-client-secret') : ''
  DATAVERSE_AUTHORITY_HOST: 'https://login.microsoftonline.com'
  DATAVERSE_CHANGE_TRACKING: dataverseChangeTracking
}

// ---- Resources ---------------------------------------------------------------------------------------
resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The app's one identity: storage, Key Vault references, App Insights ingestion, deployment package.
module apiIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'apiUserAssignedIdentity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}cosell-${resourceToken}'
    location: location
    tags: tags
  }
}

module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: '${abbrs.webServerFarms}${resourceToken}'
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
    location: location
    tags: tags
  }
}

// Shared key access off: no account keys exist anywhere; everything signs in with Entra ID.
module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        {
          name: deploymentContainerName
        }
      ]
    }
    queueServices: {
      queues: queues
    }
    tableServices: {
      tables: tables
    }
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: '${uniqueString(deployment().name, location)}-loganalytics'
  scope: rg
  params: {
    name: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

// Local auth off: telemetry is accepted only with an Entra token of the app's identity.
module monitoring 'br/public:avm/res/insights/component:0.6.0' = {
  name: '${uniqueString(deployment().name, location)}-appinsights'
  scope: rg
  params: {
    name: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
  }
}

module network 'app/network.bicep' = {
  name: 'network'
  scope: rg
  params: {
    name: '${abbrs.networkVirtualNetworks}${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    purgeProtection: keyVaultPurgeProtection
    allowedSubnetIds: [
      network.outputs.appSubnetId
    ]
    allowedIpRanges: filter(map(split(keyVaultAllowedIps, ','), ipRange => trim(ipRange)), ipRange => !empty(ipRange))
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbacAssignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.name
    keyVaultName: keyVault.outputs.name
    appPrincipalId: apiIdentity.outputs.principalId
    deployerPrincipalId: grantDeployerAccess ? principalId : ''
    deployerPrincipalType: principalType
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    appServicePlanId: appServicePlan.outputs.resourceId
    applicationInsightsName: monitoring.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    identityId: apiIdentity.outputs.resourceId
    identityClientId: apiIdentity.outputs.clientId
    virtualNetworkSubnetId: network.outputs.appSubnetId
    appSettings: appSettings
  }
  // Key Vault references and storage triggers need the roles before the first start.
  dependsOn: [
    rbac
  ]
}

// ---- Outputs (saved in the azd environment: `azd env get-values`) -----------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.SERVICE_API_NAME
output SERVICE_API_NAME string = api.outputs.SERVICE_API_NAME
output SERVICE_API_URI string = api.outputs.SERVICE_API_URI
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URI string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_TABLE_ENDPOINT string = 'https://${storage.outputs.name}.table.${environment().suffixes.storage}'
output AZURE_STORAGE_QUEUE_ENDPOINT string = 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}'
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = apiIdentity.outputs.clientId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
