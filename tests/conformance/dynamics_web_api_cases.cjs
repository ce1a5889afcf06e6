// The dynamics-web-api side of tests/conformance/test_dynamics_web_api.py: runs each case named on
// the command line against the Dataverse simulator and prints {case: {ok, detail}} as JSON.
// Environment: DV_URL (the simulator), DV_TOKEN (a bearer token for it); NODE_EXTRA_CA_CERTS trusts
// the sandbox CA.
'use strict';
const assert = require('node:assert/strict');
const { DynamicsWebApi } = require('dynamics-web-api');

const api = new DynamicsWebApi({
  serverUrl: process.env.DV_URL,
  dataApi: { version: '9.2' },
  onTokenRefresh: async () => process.env.DV_TOKEN,
});

async function statusOf(promise) {
  try {
    await promise;
  } catch (error) {
    return error.status;
  }
  return 'no error';
}

// dynamics-web-api answers a refused precondition (412, or 404 for If-Match: * on a missing row)
// with false / null instead of throwing: the test then proves the refusal by what was not written.
async function refusedQuietly(promise) {
  try {
    const value = await promise;
    return value === false || value === null || value === undefined ? 'refused' : `answered ${JSON.stringify(value)}`;
  } catch (error) {
    return [404, 412].includes(error.status) ? 'refused' : `error ${error.status}`;
  }
}

async function nameOf(id) {
  return (await api.retrieve({ collection: 'accounts', key: id, select: ['name'] })).name;
}

let sequence = 0;
const unique = (prefix) => `${prefix} ${process.pid}-${++sequence}`;

async function newAccount() {
  const created = await api.create({ collection: 'accounts', data: { name: unique('DWA') }, returnRepresentation: true });
  return { id: created.accountid, etag: created['@odata.etag'] };
}

const cases = {
  async 'create with return=representation carries the ETag'() {
    const account = await newAccount();
    assert.match(account.id, /^[0-9a-f-]{36}$/);
    assert.match(account.etag, /^W\/"\d+"$/);
    return account.etag;
  },
  async 'If-Match with the current ETag updates; a stale one is 412'() {
    const account = await newAccount();
    const second = unique('v2');
    await api.update({ collection: 'accounts', key: account.id, data: { name: second }, ifmatch: account.etag });
    const stale = api.update({ collection: 'accounts', key: account.id, data: { name: unique('v3') }, ifmatch: account.etag });
    assert.equal(await refusedQuietly(stale), 'refused');
    assert.equal(await nameOf(account.id), second);
    return 'updated once, then refused';
  },
  async 'If-None-Match with the current ETag: not modified'() {
    const account = await newAccount();
    const result = await api.retrieve({ collection: 'accounts', key: account.id, select: ['name'], ifnonematch: account.etag });
    assert.ok(result === null || result === undefined || result === '' , JSON.stringify(result));
    const changed = await api.retrieve({ collection: 'accounts', key: account.id, select: ['name'], ifnonematch: 'W/"1"' });
    assert.ok(changed.name);
    return 'null for the current ETag, the record for another';
  },
  async 'upsert with If-None-Match: * never updates; with If-Match: * never creates'() {
    const account = await newAccount();
    const before = await nameOf(account.id);
    const noUpdate = api.upsert({ collection: 'accounts', key: account.id, data: { name: 'x' }, ifnonematch: '*' });
    assert.equal(await refusedQuietly(noUpdate), 'refused');
    assert.equal(await nameOf(account.id), before);
    const missing = '00000000-0000-4000-8000-00000000beef';
    const noCreate = api.upsert({ collection: 'accounts', key: missing, data: { name: 'x' }, ifmatch: '*' });
    assert.equal(await refusedQuietly(noCreate), 'refused');
    assert.equal(await statusOf(api.retrieve({ collection: 'accounts', key: missing })), 404);
    return 'neither updated nor created';
  },
  async 'upsert by alternate key'() {
    const key = `pcs_solutionid='SOL-${process.pid}-${++sequence}'`;
    await api.upsert({ collection: 'pcs_solutiondetails', key, data: { pcs_name: 'First' } });
    await api.upsert({ collection: 'pcs_solutiondetails', key, data: { pcs_name: 'Second' } });
    const found = await api.retrieve({ collection: 'pcs_solutiondetails', key, select: ['pcs_name'] });
    assert.equal(found.pcs_name, 'Second');
    return key;
  },
  async 'delete with a stale ETag is 412'() {
    const account = await newAccount();
    await api.update({ collection: 'accounts', key: account.id, data: { name: unique('moved on') } });
    const removal = api.deleteRecord({ collection: 'accounts', key: account.id, ifmatch: account.etag });
    assert.equal(await refusedQuietly(removal), 'refused');
    assert.ok(await nameOf(account.id));
    return 'refused, the row is still there';
  },
  async 'paging: maxPageSize and the next link'() {
    const tag = unique('Page');
    for (let n = 0; n < 3; n++) await api.create({ collection: 'contacts', data: { lastname: `${tag} ${n}` } });
    const request = { collection: 'contacts', select: ['lastname'], filter: `startswith(lastname, '${tag}')`, maxPageSize: 2 };
    const first = await api.retrieveMultiple(request);
    assert.equal(first.value.length, 2);
    assert.ok(first.oDataNextLink);
    const second = await api.retrieveMultiple(request, first.oDataNextLink);
    assert.equal(second.value.length, 1);
    return 'pages of 2 and 1';
  },
  async 'attribute metadata through a type cast'() {
    const picklists = await api.retrieveAttributes({
      entityKey: "LogicalName='opportunity'",
      castType: 'Microsoft.Dynamics.CRM.PicklistAttributeMetadata',
      select: ['LogicalName'],
    });
    assert.ok(picklists.value.length > 0);
    return picklists.value.map((item) => item.LogicalName).join(', ');
  },
  async 'an unknown query option is refused'() {
    const status = await statusOf(api.retrieveMultiple({ collection: 'accounts', select: ['name'], fetchXml: '<fetch/>' }));
    assert.equal(status, 400);
    return '400';
  },
};

async function main() {
  const results = {};
  for (const name of process.argv.slice(2)) {
    const run = cases[name];
    if (!run) {
      results[name] = { ok: false, detail: 'no such case in dynamics_web_api_cases.cjs' };
      continue;
    }
    try {
      results[name] = { ok: true, detail: String(await run()) };
    } catch (error) {
      results[name] = { ok: false, detail: `${error && error.name}: ${error && error.message} (status ${error && error.status})` };
    }
  }
  process.stdout.write(JSON.stringify(results));
}

main();
