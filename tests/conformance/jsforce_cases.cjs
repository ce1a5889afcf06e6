// The jsforce side of tests/conformance/test_jsforce.py: runs each case named on the command line
// against the Salesforce simulator with jsforce's own code, and prints {case: {ok, detail}} as JSON.
// Environment: SF_URL (the simulator), SF_USERNAME, SF_PASSWORD, SF_TOKEN, SF_CLIENT_ID,
// SF_CLIENT_SECRET, SF_JWT (an assertion signed with the connected app's key); NODE_EXTRA_CA_CERTS
// trusts the sandbox CA.
'use strict';
const assert = require('node:assert/strict');
const jsforce = require('jsforce');

const env = process.env;
const VERSION = '62.0';
const url = env.SF_URL;

function oauth2() {
  return { loginUrl: url, clientId: env.SF_CLIENT_ID, clientSecret: env.SF_CLIENT_SECRET };
}

async function passwordSession() {
  const conn = new jsforce.Connection({ oauth2: oauth2(), version: VERSION });
  await conn.login(env.SF_USERNAME, env.SF_PASSWORD + env.SF_TOKEN);
  return conn;
}

async function control(path, body) {
  const response = await fetch(url + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `${path}: ${response.status}`);
}

async function errorOf(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected an error, got a success');
}

let sequence = 0;
const unique = (prefix) => `${prefix} ${process.pid}-${++sequence}`;

const cases = {
  async 'login: SOAP username + password + security token'() {
    const conn = new jsforce.Connection({ loginUrl: url, version: VERSION });
    const info = await conn.login(env.SF_USERNAME, env.SF_PASSWORD + env.SF_TOKEN);
    assert.match(info.id, /^005/);
    assert.equal(conn.instanceUrl, url);
    return `user ${info.id}, org ${info.organizationId}`;
  },
  async 'login: OAuth 2.0 username-password flow'() {
    const conn = await passwordSession();
    assert.ok(conn.accessToken);
    return `instance ${conn.instanceUrl}`;
  },
  async 'login: OAuth 2.0 client credentials flow'() {
    const conn = new jsforce.Connection({ oauth2: oauth2(), version: VERSION });
    await conn.authorize({ grant_type: 'client_credentials' });
    assert.ok(conn.accessToken);
    return `user ${conn.userInfo && conn.userInfo.id}`;
  },
  async 'login: OAuth 2.0 JWT bearer flow'() {
    const conn = new jsforce.Connection({ oauth2: oauth2(), version: VERSION });
    await conn.authorize({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion: env.SF_JWT });
    assert.ok(conn.accessToken);
    return 'signed in';
  },
  async 'login: a wrong password is refused'() {
    const conn = new jsforce.Connection({ oauth2: oauth2(), version: VERSION });
    const error = await errorOf(conn.login(env.SF_USERNAME, 'wrong'));
    assert.match(String(error.name || error.message), /invalid_grant|authentication failure/);
    return String(error.message);
  },
  async 'identity URL'() {
    const conn = await passwordSession();
    const identity = await conn.identity();
    assert.equal(identity.username, env.SF_USERNAME);
    assert.match(identity.user_id, /^005/);
    assert.ok(identity.organization_id);
    return `${identity.username} in ${identity.organization_id}`;
  },
  async 'describe global and describe sObject'() {
    const conn = await passwordSession();
    const global = await conn.describeGlobal();
    assert.ok(global.sobjects.some((item) => item.name === 'Opportunity'));
    const account = await conn.sobject('Account').describe();
    assert.ok(account.fields.some((field) => field.name === 'Name'));
    return `${global.sobjects.length} objects, Account has ${account.fields.length} fields`;
  },
  async 'CRUD: create, retrieve, update, delete'() {
    const conn = await passwordSession();
    const accounts = conn.sobject('Account');
    const created = await accounts.create({ Name: unique('CRUD') });
    assert.equal(created.success, true);
    const record = await accounts.retrieve(created.id);
    assert.equal(record.Id, created.id);
    const updated = await accounts.update({ Id: created.id, Name: 'Renamed' });
    assert.equal(updated.success, true);
    assert.equal((await accounts.retrieve(created.id)).Name, 'Renamed');
    const removed = await accounts.destroy(created.id);
    assert.equal(removed.success, true);
    const gone = await errorOf(accounts.retrieve(created.id));
    assert.match(gone.errorCode || gone.name, /ENTITY_IS_DELETED|NOT_FOUND/);
    return `record ${created.id}`;
  },
  async 'SOQL: find() escapes quotes'() {
    const conn = await passwordSession();
    const name = `O'Brien's ${unique('Escape')}`;
    await conn.sobject('Account').create({ Name: name });
    const found = await conn.sobject('Account').find({ Name: name }, ['Id', 'Name']);
    assert.equal(found.length, 1);
    assert.equal(found[0].Name, name);
    return `found ${JSON.stringify(name)}`;
  },
  async 'query paging: nextRecordsUrl and queryMore'() {
    const conn = await passwordSession();
    const tag = unique('Page');
    await conn.sobject('Account').create([1, 2, 3, 4, 5].map((n) => ({ Name: `${tag} ${n}` })));
    await control('/_sandbox/page-size', { size: 2 });
    try {
      const soql = `SELECT Id, Name FROM Account WHERE Name LIKE '${tag}%' ORDER BY Name`;
      const first = await conn.query(soql, { autoFetch: false });
      assert.equal(first.totalSize, 5);
      assert.equal(first.done, false);
      assert.equal(first.records.length, 2);
      const second = await conn.queryMore(first.nextRecordsUrl);
      assert.equal(second.records.length, 2);
      const all = await conn.query(soql, { autoFetch: true, maxFetch: 100 });
      assert.equal(all.records.length, 5);
      return `5 rows in pages of 2`;
    } finally {
      await control('/_sandbox/page-size', { size: 2000 });
    }
  },
  async 'upsert by external id: insert, then update'() {
    const conn = await passwordSession();
    const account = await conn.sobject('Account').create({ Name: unique('Upsert') });
    const key = `ext-${process.pid}-${++sequence}`;
    const values = {
      Name: 'Upserted deal', AccountId: account.id, StageName: 'Qualification',
      CloseDate: '2030-01-01', PCS_Referral_Id__c: key,
    };
    const inserted = await conn.sobject('Opportunity').upsert(values, 'PCS_Referral_Id__c');
    assert.equal(inserted.success, true);
    assert.equal(inserted.created, true);
    const updated = await conn.sobject('Opportunity').upsert({ ...values, Name: 'Again' }, 'PCS_Referral_Id__c');
    assert.equal(updated.success, true);
    assert.equal(updated.created, false);
    return `created ${inserted.id}, then updated it`;
  },
  async 'sObject Collections: create, update, retrieve, delete'() {
    const conn = await passwordSession();
    const accounts = conn.sobject('Account');
    const created = await accounts.create([{ Name: unique('Coll') }, { Name: unique('Coll') }], { allOrNone: true });
    assert.ok(created.every((result) => result.success), JSON.stringify(created));
    const ids = created.map((result) => result.id);
    const updated = await accounts.update(ids.map((Id) => ({ Id, Phone: '555-0100' })), { allOrNone: true });
    assert.ok(updated.every((result) => result.success), JSON.stringify(updated));
    const records = await accounts.retrieve(ids, { fields: ['Id', 'Phone'] });
    assert.deepEqual(records.map((record) => record.Phone), ['555-0100', '555-0100']);
    const removed = await accounts.destroy(ids, { allOrNone: true });
    assert.ok(removed.every((result) => result.success), JSON.stringify(removed));
    return `${ids.length} records`;
  },
  async 'sObject Collections: retrieve by GET'() {
    const conn = await passwordSession();
    const created = await conn.sobject('Account').create({ Name: unique('Get') });
    const path = `/services/data/v${VERSION}/composite/sobjects/Account?ids=${created.id}&fields=Id,Name`;
    const records = await conn.request(path);
    assert.equal(records[0].Id, created.id);
    return 'one record';
  },
  async 'sObject Collections: allOrNone rolls every record back'() {
    const conn = await passwordSession();
    const results = await conn.sobject('Account').create([{ Name: unique('Ok') }, { Nope__c: 1 }], { allOrNone: true });
    assert.ok(results.every((result) => !result.success), JSON.stringify(results));
    assert.equal(results[0].errors[0].statusCode, 'ALL_OR_NONE_OPERATION_ROLLED_BACK');
    return results.map((result) => result.errors[0].statusCode).join(', ');
  },
  async 'composite: references between subrequests and allOrNone'() {
    const conn = await passwordSession();
    const base = `/services/data/v${VERSION}`;
    const response = await conn.requestPost(`${base}/composite`, {
      allOrNone: true,
      compositeRequest: [
        { method: 'POST', url: `${base}/sobjects/Account`, referenceId: 'acct', body: { Name: unique('Comp') } },
        { method: 'GET', url: `${base}/sobjects/Account/@{acct.id}`, referenceId: 'read' },
      ],
    });
    const [create, read] = response.compositeResponse;
    assert.equal(create.httpStatusCode, 201);
    assert.equal(read.body.Id, create.body.id);
    const failed = await conn.requestPost(`${base}/composite`, {
      allOrNone: true,
      compositeRequest: [
        { method: 'POST', url: `${base}/sobjects/Account`, referenceId: 'a', body: { Name: unique('Roll') } },
        { method: 'POST', url: `${base}/sobjects/Account`, referenceId: 'b', body: { Nope__c: 1 } },
      ],
    });
    assert.deepEqual(failed.compositeResponse.map((item) => item.httpStatusCode), [400, 400]);
    assert.equal(failed.compositeResponse[0].body[0].errorCode, 'PROCESSING_HALTED');
    return 'reference resolved; failure rolled back';
  },
  async 'get updated and get deleted'() {
    const conn = await passwordSession();
    const start = new Date(Date.now() - 60_000);
    const kept = await conn.sobject('Account').create({ Name: unique('Replicate') });
    const removed = await conn.sobject('Account').create({ Name: unique('Replicate') });
    await conn.sobject('Account').destroy(removed.id);
    const end = new Date(Date.now() + 60_000);
    const updated = await conn.sobject('Account').updated(start, end);
    assert.ok(updated.ids.includes(kept.id), JSON.stringify(updated));
    assert.ok(updated.latestDateCovered);
    const deleted = await conn.sobject('Account').deleted(start, end);
    assert.ok(deleted.deletedRecords.some((item) => item.id === removed.id), JSON.stringify(deleted));
    assert.ok(deleted.earliestDateAvailable);
    return `${updated.ids.length} updated, ${deleted.deletedRecords.length} deleted`;
  },
  async 'errors: unknown field, unknown object, malformed SOQL, missing record'() {
    const conn = await passwordSession();
    const field = await errorOf(conn.sobject('Account').create({ Nope__c: 1 }));
    assert.equal(field.errorCode, 'INVALID_FIELD');
    const object = await errorOf(conn.sobject('Nope__c').describe());
    assert.equal(object.errorCode, 'NOT_FOUND');
    const soql = await errorOf(conn.query('SELECT FROM'));
    assert.equal(soql.errorCode, 'MALFORMED_QUERY');
    const missing = await errorOf(conn.sobject('Account').retrieve('001000000000000AAA'));
    assert.equal(missing.errorCode, 'NOT_FOUND');
    return [field, object, soql, missing].map((error) => error.errorCode).join(', ');
  },
  async 'errors: an unknown SOQL function is refused'() {
    const conn = await passwordSession();
    const error = await errorOf(conn.query('SELECT Id, NOPE(Name) FROM Account'));
    assert.match(error.errorCode, /MALFORMED_QUERY|INVALID_FIELD/);
    return error.errorCode;
  },
};

async function main() {
  const results = {};
  for (const name of process.argv.slice(2)) {
    const run = cases[name];
    if (!run) {
      results[name] = { ok: false, detail: 'no such case in jsforce_cases.cjs' };
      continue;
    }
    try {
      results[name] = { ok: true, detail: String(await run()) };
    } catch (error) {
      const code = error && error.errorCode ? ` [${error.errorCode}]` : '';
      results[name] = { ok: false, detail: `${error && error.name}: ${error && error.message}${code}` };
    }
  }
  process.stdout.write(JSON.stringify(results));
}

main();
