/**
 * `joinJob`: enrol (or resume), then train and upload every round this device is sampled for
 * until the job ends: client_sdk.client.Client.run in a page.
 *
 * Resumable like the Python client (see state.ts): a page reloaded while training trains the
 * round again; one reloaded during or after an upload re-sends the stored update byte for byte,
 * and the coordinator answers an update it already accepted with 200 without counting it twice.
 */

import { sha256Hex } from "./encoding.js";
import { ApiError, Coordinator, Unavailable, sleep } from "./http.js";
import { observe } from "./model.js";
import { enrol, jobModel, startingAdapter, task, upload, type TrainTask } from "./protocol.js";
import { defaultAssets, holdout, loadBase, loadManifest, type Manifest } from "./data.js";
import { trainingSeed } from "./random.js";
import { complexityStats } from "./stats.js";
import { DeviceState, stateKey, type Credentials, type PendingInfo } from "./state.js";
import { baseModel, layerModes, trainRound, type Base, type Samples } from "./training.js";

/** How long the coordinator may hold a task request (long-poll), as the Python client asks. */
export const TASK_WAIT_S = 25;
/** The longest pause between two task requests. */
export const MAX_POLL_S = 30;
/** Unreachable for longer than this, the client gives up (client_sdk.Client.offline_limit_s). */
export const OFFLINE_LIMIT_S = 900;

export type DeviceData = Samples;

export type ClientEvent =
  | { type: "status"; message: string }
  | { type: "enrolled"; clientId: string; rank: number | null; stats: Record<string, number | null> }
  | { type: "round"; round: number; rank: number; loss: number; accuracy: number; bytesSent: number; seconds: number }
  | { type: "done"; jobStatus: string }
  | { type: "error"; message: string; retrying: boolean };

export interface JoinOptions {
  /** The coordinator's origin, e.g. location.origin. */
  baseUrl: string;
  jobId: string;
  /** Needed the first time only: a resumed client holds its own credential. */
  joinToken: string;
  /** The device's training data; 20 % of it is held out for the local validation metrics. */
  data: DeviceData;
  /** Default window.localStorage: credential, round state, FedSA's private B and head. */
  storage?: Storage;
  /** The client's name in the job (its stable identity: the training seeds derive from it). */
  deviceName?: string;
  onEvent?: (e: ClientEvent) => void;
  /** Aborting stops the client at its next request or wait: joinJob resolves "stopped". */
  signal?: AbortSignal;
  /** Where manifest.json and the base weights are (default: `digits/` beside the bundle). */
  assets?: string | URL;
}

interface Session {
  api: Coordinator;
  state: DeviceState;
  credentials: Credentials;
  base: Base;
  train: Samples;
  val: Samples | null;
  emit: (e: ClientEvent) => void;
}

export async function joinJob(opts: JoinOptions): Promise<{ jobStatus: string }> {
  const emit = (e: ClientEvent) => opts.onEvent?.(e);
  try {
    const session = await start(opts, emit);
    await resendPending(session);
    let offlineSince: number | null = null;
    for (;;) {
      let delay: number;
      try {
        const outcome = await step(session);
        if (typeof outcome === "string") {
          emit({ type: "done", jobStatus: outcome });
          return { jobStatus: outcome };
        }
        delay = outcome;
        offlineSince = null;
      } catch (error) {
        if (!(error instanceof Unavailable) || opts.signal?.aborted) throw error;
        offlineSince ??= Date.now();
        if (Date.now() - offlineSince > OFFLINE_LIMIT_S * 1000) throw error;
        emit({ type: "error", message: error.message, retrying: true });
        delay = MAX_POLL_S;
      }
      // Jitter so that many clients told the same retry_after do not poll in lockstep.
      await sleep(Math.min(delay, MAX_POLL_S) * (0.9 + 0.2 * Math.random()), opts.signal);
    }
  } catch (error) {
    if (opts.signal?.aborted) return { jobStatus: "stopped" };
    emit({ type: "error", message: error instanceof Error ? error.message : String(error), retrying: false });
    throw error;
  }
}

async function start(opts: JoinOptions, emit: (e: ClientEvent) => void): Promise<Session> {
  const baseUrl = opts.baseUrl.replace(/\/+$/, "");
  const api = new Coordinator(baseUrl, opts.signal);
  const state = new DeviceState(opts.storage ?? globalThis.localStorage, stateKey(baseUrl, opts.jobId));
  const assets = opts.assets ?? defaultAssets();
  emit({ type: "status", message: "loading the digits model" });
  const manifest = await loadManifest(assets);
  const base = { tensors: await loadBase(manifest, assets) };
  const { x, y, features } = opts.data;
  if (features !== manifest.features || y.length === 0 || x.length !== y.length * features) {
    throw new Error(`the data must hold rows of ${manifest.features} features and a label each`);
  }
  const { train, val } = holdout(opts.data);
  let credentials = state.credentials;
  if (credentials === null) {
    const enrolled = await enrolDevice(api, opts, state, manifest, base, train, emit);
    credentials = enrolled.credentials;
    emit({ type: "enrolled", clientId: credentials.client_id, rank: enrolled.rank, stats: state.stats! });
  } else {
    emit({ type: "status", message: `resumed as client ${credentials.client_id}` });
    emit({ type: "enrolled", clientId: credentials.client_id, rank: null, stats: state.stats! });
  }
  api.token = credentials.token;
  return { api, state, credentials, base, train, val, emit };
}

async function enrolDevice(api: Coordinator, opts: JoinOptions, state: DeviceState, manifest: Manifest,
  base: Base, train: Samples, emit: (e: ClientEvent) => void): Promise<{ credentials: Credentials; rank: number | null }> {
  if (!opts.joinToken) throw new Error("not enrolled yet: a join token is needed for the first run");
  const job = await jobModel(api, opts.jobId, opts.joinToken);
  const model = job.model;
  if (model === null || model.source !== manifest.model || model.config_sha256 !== manifest.config_sha256) {
    throw new Error(`this client trains ${manifest.model}; job "${job.name}" trains ${model?.source ?? "modules written by hand"}`);
  }
  layerModes(model); // refuse a spec this client cannot train before enrolling
  emit({ type: "status", message: "profiling the local data" });
  // Before round 1 every B is zero: the initial global model's losses are the base's.
  const frozen = { fc1: "frozen", fc2: "frozen", fc3: "frozen" } as const;
  const { losses } = observe(baseModel(base, frozen, 0, 0), train.x, train.y);
  const stats = complexityStats(train.y, losses, manifest.num_labels);
  const enrolled = await enrol(api, opts.jobId, opts.joinToken, {
    stats, model_sha256: manifest.config_sha256, credential: state.enrolmentCredential(),
    ...(opts.deviceName ? { name: opts.deviceName } : {}),
  });
  const credentials = { client_id: enrolled.client_id, token: enrolled.credential, name: opts.deviceName || null };
  state.saveCredentials(credentials, stats);
  return { credentials, rank: enrolled.rank };
}

/** Ask for a task and act on it: the job's final status, or seconds before asking again. */
async function step(s: Session): Promise<number | string> {
  const t = await task(s.api, TASK_WAIT_S);
  if (t.action === "finished") return t.status;
  if (t.action !== "train") {
    s.emit({ type: "status", message: `waiting: ${t.reason}` });
    return t.retry_after ?? 1;
  }
  const round = t.round_number;
  if (s.state.alreadyUploaded(round)) return 1; // the coordinator has not seen our upload yet
  const pending = await s.state.pending();
  if (pending !== null && pending.round === round) {
    await deliver(s, round, pending.update, pending.sha256, { ...pending.info, upload_url: t.upload_url });
  } else {
    s.state.clearPending();
    const trained = await trainAndKeep(s, t);
    await deliver(s, round, trained.update, trained.sha256, trained.info);
  }
  return 0;
}

async function trainAndKeep(s: Session, t: TrainTask) {
  const round = t.round_number;
  if (!t.adapter) s.emit({ type: "status", message: `round ${round}: downloading the adapter (rank ${t.rank})` });
  const adapter = await startingAdapter(s.api, t);
  s.emit({ type: "status", message: `round ${round}: training` });
  const seed = trainingSeed(t.seed, round, s.credentials.client_id, s.credentials.name);
  const result = trainRound(s.base, t, adapter, s.state.privateBytes, s.train, s.val, seed);
  const sha256 = await sha256Hex(result.update);
  const info: PendingInfo = {
    round_id: t.round_id, upload_url: t.upload_url, n_samples: result.nSamples, rank: t.rank,
    metrics: clean(result.metrics), summary: { ...result.evaluation, seconds: result.metrics.train_seconds },
  };
  // Stored before the upload starts: a reload from here on re-sends these bytes.
  s.state.savePending(round, result.update, sha256, info, result.private);
  return { update: result.update, sha256, info };
}

async function deliver(s: Session, round: number, update: Uint8Array, sha256: string, info: PendingInfo): Promise<void> {
  s.emit({ type: "status", message: `round ${round}: uploading ${update.length} bytes` });
  try {
    await upload(s.api, info.upload_url, update, sha256, info.n_samples, info.metrics);
  } catch (error) {
    if (error instanceof ApiError && [404, 409, 410].includes(error.status)) {
      // The round closed, or this client is not (or no longer) expected in it: this update
      // can never count. Drop it; the private tensors keep what it learnt.
      s.state.clearPending();
      s.emit({ type: "status", message: `round ${round}: update not taken (${String(error.detail)})` });
      return;
    }
    throw error;
  }
  s.state.recordAccepted(round, sha256);
  s.emit({ type: "round", round, rank: info.rank, loss: info.summary.loss, accuracy: info.summary.accuracy,
    bytesSent: update.length, seconds: info.summary.seconds });
}

/** After a reload: finish an upload that was cut off (or answered but not recorded). */
async function resendPending(s: Session): Promise<void> {
  const pending = await s.state.pending();
  if (pending === null) return;
  s.emit({ type: "status", message: `round ${pending.round}: re-sending the stored update` });
  try {
    await deliver(s, pending.round, pending.update, pending.sha256, pending.info);
  } catch (error) {
    // Unreachable now: the loop re-sends it when the coordinator hands out the round again.
    if (!(error instanceof Unavailable)) throw error;
  }
}

/** Finite numbers only: the coordinator refuses NaN and infinities in Flaas-Metrics. */
function clean(metrics: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(metrics).filter(([, v]) => Number.isFinite(v)));
}
