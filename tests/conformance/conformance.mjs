// Conformance of panorama-local-backend with the official supabase-js client.
// Run by tests/local_backend_conformance.rs, which starts the backend and passes
// PANORAMA_BACKEND_URL, PANORAMA_ANON_KEY and PANORAMA_SERVICE_ROLE_KEY.
// Exits 0 when every check passes; prints each check and the first failure otherwise.
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';

const url = process.env.PANORAMA_BACKEND_URL;
const anon = process.env.PANORAMA_ANON_KEY;
const service = process.env.PANORAMA_SERVICE_ROLE_KEY;
if (!url || !anon || !service) {
  console.error('set PANORAMA_BACKEND_URL, PANORAMA_ANON_KEY and PANORAMA_SERVICE_ROLE_KEY (the test does this)');
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error('FAIL: conformance run took longer than 60 s');
  process.exit(1);
}, 60_000);

let step = 'start';
function check(cond, what, detail) {
  if (!cond) {
    throw new Error(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  }
}
function ok(what) {
  console.log(`ok - ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Gateway-style clients, configured as the reference gateway does.
function gatewayClient(autoRefreshToken) {
  return createClient(url, anon, {
    auth: { persistSession: false, autoRefreshToken, detectSessionInUrl: false },
    realtime: { params: { eventsPerSecond: 10 }, transport: WebSocket },
  });
}

const svc = createClient(url, service, {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: { transport: WebSocket },
});

async function pair(teamId) {
  const { data: code, error } = await svc.rpc('admin_create_pairing_code', teamId ? { team_id: teamId } : {});
  check(!error && code && code.code, 'admin_create_pairing_code through rpc()', error ?? code);
  // The gateway's raw fetch, exactly as PROTOCOL.md §3.
  const res = await fetch(`${url}/functions/v1/exchange-gateway-pairing-code`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', apikey: anon, Authorization: `Bearer ${anon}` },
    body: JSON.stringify({ code: code.code, device_name: 'conformance' }),
  });
  const body = await res.json();
  check(res.ok && body.success === true, 'pairing exchange succeeds', body);
  check(
    JSON.stringify(Object.keys(body).sort()) ===
      JSON.stringify(['access_token', 'expires_at', 'gateway_id', 'refresh_token', 'success', 'team_id', 'token_type']),
    'pairing body has exactly the 7 keys',
    Object.keys(body),
  );
  check(!Number.isNaN(Date.parse(body.expires_at)), 'expires_at is an ISO datetime', body.expires_at);
  return body;
}

async function enqueue(teamId, gatewayId, extra = {}) {
  const { data, error } = await svc
    .from('gateway_jobs')
    .insert({ team_id: teamId, gateway_id: gatewayId, job_type: 'diagnostic', payload: {}, ...extra })
    .select('*')
    .single();
  check(!error && data, 'service role inserts a job', error);
  return data;
}

async function main() {
  step = 'pairing';
  const gw = await pair();
  ok('pairing exchange');
  const other = await pair();
  ok('second team paired');

  step = 'setSession';
  const client = gatewayClient(true);
  const authEvents = [];
  client.auth.onAuthStateChange((event) => authEvents.push(event));
  const { data: sess, error: sessErr } = await client.auth.setSession({
    access_token: gw.access_token,
    refresh_token: gw.refresh_token,
  });
  check(!sessErr && sess.session && sess.user, 'setSession with the paired tokens', sessErr);
  check(sess.user.role === 'authenticated', 'user role is authenticated', sess.user);
  ok('setSession (GET /auth/v1/user)');

  step = 'realtime';
  const received = [];
  let subscribed;
  const subscribedP = new Promise((resolve, reject) => {
    subscribed = { resolve, reject };
  });
  const channel = client
    .channel(`gateway_jobs_${gw.gateway_id}`)
    .on(
      'postgres_changes',
      { event: 'INSERT', schema: 'public', table: 'gateway_jobs', filter: `team_id=eq.${gw.team_id}` },
      (payload) => received.push(payload),
    )
    .subscribe((status, err) => {
      if (status === 'SUBSCRIBED') subscribed.resolve();
      else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') subscribed.reject(new Error(`${status}: ${err?.message}`));
    });
  await Promise.race([subscribedP, sleep(10_000).then(() => { throw new Error('no SUBSCRIBED within 10 s'); })]);
  ok('realtime channel SUBSCRIBED');

  const foreign = await enqueue(other.team_id, other.gateway_id);
  const job = await enqueue(gw.team_id, gw.gateway_id, { idempotency_key: 'conf-key' });
  for (let i = 0; i < 100 && received.length === 0; i++) await sleep(50);
  await sleep(300);
  check(received.length === 1, 'exactly one INSERT delivered (own team only)', received.map((r) => r.new?.id));
  const ev = received[0];
  check(ev.eventType === 'INSERT' && ev.table === 'gateway_jobs' && ev.schema === 'public', 'event shape', ev);
  check(ev.new.id === job.id && ev.new.status === 'queued' && ev.new.attempt === 1, 'delivered row', ev.new);
  check('result' in ev.new && 'error' in ev.new && 'completed_at' in ev.new, 'row carries result/error/completed_at', ev.new);
  check(ev.new.id !== foreign.id, 'no delivery for another team');
  ok('INSERT delivered with the team filter, none for another team');

  step = 'reconcile';
  const { data: queued, error: qErr } = await client
    .from('gateway_jobs')
    .select('*')
    .eq('team_id', gw.team_id)
    .eq('status', 'queued')
    .eq('gateway_id', gw.gateway_id)
    .order('created_at', { ascending: true });
  check(!qErr && queued.length === 1 && queued[0].id === job.id, 'reconcile select', qErr ?? queued);
  ok('reconcile query');

  step = 'claim';
  const claimQ = () =>
    client
      .from('gateway_jobs')
      .update({ status: 'running', gateway_id: gw.gateway_id, started_at: new Date().toISOString() })
      .eq('id', job.id)
      .eq('team_id', gw.team_id)
      .eq('status', 'queued')
      .eq('gateway_id', gw.gateway_id)
      .select('*')
      .maybeSingle();
  const { data: claimed, error: cErr } = await claimQ();
  check(!cErr && claimed && claimed.status === 'running', 'claim returns the row', cErr ?? claimed);
  const { data: again, error: aErr } = await claimQ();
  check(!aErr && again === null, 'second claim returns null', aErr ?? again);
  ok('claim (conditional update + maybeSingle)');

  step = 'idempotency';
  const dup = await enqueue(gw.team_id, gw.gateway_id, { idempotency_key: 'conf-key' });
  const { data: hit, error: iErr } = await client
    .from('gateway_jobs')
    .select('id,status,result,error')
    .eq('team_id', gw.team_id)
    .eq('idempotency_key', 'conf-key')
    .eq('attempt', 1)
    .in('status', ['running', 'completed'])
    .neq('id', dup.id)
    .order('created_at', { ascending: true })
    .limit(1)
    .maybeSingle();
  check(!iErr && hit && hit.id === job.id && hit.status === 'running', 'idempotency query finds the running job', iErr ?? hit);
  ok('idempotency query');

  step = 'complete';
  const { data: compData, error: compErr, status: compStatus } = await client
    .from('gateway_jobs')
    .update({ status: 'completed', result: { ok: true }, error: null, completed_at: new Date().toISOString() })
    .eq('id', job.id)
    .eq('status', 'running');
  check(!compErr && compData === null && compStatus === 204, 'complete update answers 204', { compErr, compStatus });
  const { data: st } = await client.from('gateway_jobs').select('status').eq('id', job.id).maybeSingle();
  check(st && st.status === 'completed', 'job is completed', st);
  ok('complete');

  step = 'events';
  const { error: evErr, status: evStatus } = await client.from('gateway_events').insert({
    gateway_id: gw.gateway_id,
    team_id: gw.team_id,
    provider: 'gemini',
    level: 'warn',
    code: 'provider_validation',
    message: 'gemini validation status: unknown',
    details: { context: 'startup' },
  });
  check(!evErr && evStatus === 201, 'insert into gateway_events', evErr);
  ok('gateway_events insert');

  step = 'heartbeat';
  const { data: hb, error: hbErr } = await client.functions.invoke('gateway-heartbeat', {
    body: { status: 'ready', capabilities: { schema_version: 'v1' }, device_name: 'conformance' },
  });
  check(!hbErr && hb && hb.success === true && hb.egress_credential_renewal === null, 'heartbeat result', hbErr ?? hb);
  const { data: ctl, error: ctlErr } = await client
    .from('team_gateways')
    .select('full_control_enabled,status,last_seen_at,capabilities')
    .eq('id', gw.gateway_id)
    .eq('team_id', gw.team_id)
    .maybeSingle();
  check(!ctlErr && ctl && ctl.status === 'ready' && ctl.last_seen_at, 'heartbeat recorded', ctlErr ?? ctl);
  ok('functions.invoke(gateway-heartbeat) and control state');

  step = 'single';
  const { error: sErr, status: sStatus } = await client.from('gateway_jobs').select('id').eq('id', other.gateway_id).single();
  check(sErr && sErr.code === 'PGRST116' && sStatus === 406, '.single() on zero rows is 406 PGRST116', { sErr, sStatus });
  ok('single() error shape');

  step = 'refresh';
  const before = (await client.auth.getSession()).data.session;
  const { data: ref, error: refErr } = await client.auth.refreshSession();
  check(!refErr && ref.session, 'refreshSession', refErr);
  check(ref.session.refresh_token !== before.refresh_token, 'refresh token rotated');
  check(authEvents.includes('TOKEN_REFRESHED'), 'TOKEN_REFRESHED event', authEvents);
  const { data: afterRows, error: afterErr } = await client.from('gateway_jobs').select('id').eq('team_id', gw.team_id);
  check(!afterErr && afterRows.length === 2, 'REST works with the refreshed session', afterErr ?? afterRows);
  ok('refreshSession rotates and the new session works');

  step = 'rls';
  const otherClient = gatewayClient(false);
  const { error: oErr } = await otherClient.auth.setSession({ access_token: other.access_token, refresh_token: other.refresh_token });
  check(!oErr, 'second gateway session', oErr);
  const { data: seen } = await otherClient.from('gateway_jobs').select('id');
  check(seen.length === 1 && seen[0].id === foreign.id, 'another team sees only its own job', seen);
  const { data: claimOther } = await otherClient
    .from('gateway_jobs')
    .update({ status: 'cancelled' })
    .eq('id', dup.id)
    .select('id')
    .maybeSingle();
  check(claimOther === null, 'another team cannot update our job');
  const anonClient = createClient(url, anon, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket },
  });
  const { data: anonRows, error: anonErr } = await anonClient.from('gateway_jobs').select('id');
  check(!anonErr && anonRows.length === 0, 'the anon key alone sees nothing', anonErr ?? anonRows);
  ok('RLS isolation');

  step = 'forged';
  const parts = gw.access_token.split('.');
  const forged = `${parts[0]}.${parts[1]}.${parts[2].slice(0, -4)}AAAA`;
  const forgedClient = createClient(url, anon, {
    auth: { persistSession: false, autoRefreshToken: false },
    global: { headers: { Authorization: `Bearer ${forged}` } },
    realtime: { transport: WebSocket },
  });
  const { error: fErr, status: fStatus } = await forgedClient.from('gateway_jobs').select('id');
  check(fErr && fStatus === 401, 'a forged bearer is refused with 401 on REST', { fErr, fStatus });
  const { error: fuErr } = await client.auth.getUser(forged);
  check(fuErr && fuErr.status === 401, 'a forged bearer is refused with 401 on /auth/v1/user', fuErr);
  const { error: ffErr } = await forgedClient.functions.invoke('gateway-heartbeat', { body: { status: 'ready' } });
  check(ffErr && ffErr.context && ffErr.context.status === 401, 'a forged bearer is refused with 401 on functions', ffErr?.message);
  ok('forged bearer refused with 401');

  step = 'unsubscribe';
  const res = await channel.unsubscribe();
  check(res === 'ok', 'unsubscribe', res);
  await client.removeAllChannels();
  ok('unsubscribe');

  client.auth.stopAutoRefresh();
  clearTimeout(watchdog);
  console.log('conformance: all checks passed');
  process.exit(0);
}

main().catch((e) => {
  console.error(`FAIL at step ${step}: ${e?.stack ?? e}`);
  process.exit(1);
});
