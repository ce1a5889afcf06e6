// Entra ID sign-in for the status page through App Service authentication ("Easy Auth").
// Browsers on /api/status are sent to sign in; the app then checks the admin app role itself
// (shared/admin/access.py). Partner Center's webhook, the health probe and the function-key admin
// route are excluded, so they stay reachable without a user.
param functionAppName string
@description('Application (client) id of the Entra app registration admins sign in to.')
param clientId string
param tenantId string = tenant().tenantId

resource site 'Microsoft.Web/sites@2023-12-01' existing = {
  name: functionAppName
}

resource auth 'Microsoft.Web/sites/config@2023-12-01' = {
  // checkov:skip=CKV_AZURE_13: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_222: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_63: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_65: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_66: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_80: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  // checkov:skip=CKV_AZURE_88: this resource is the site's authsettingsV2 config, not a web app; checkov reads Microsoft.Web/sites/config as one (the site's own checks run on app/api.bicep)
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/api/partner-center/events'
        '/api/health'
        '/api/health/details'
        '/api/manage/partner-center/webhook-registration'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            clientId
            'api://${clientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: true
      }
    }
    httpSettings: {
      requireHttps: true
      forwardProxy: {
        convention: 'NoProxy'
      }
    }
  }
}
