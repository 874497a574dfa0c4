/**
 * On-device state of one client in one job, in the page's Storage (localStorage by default),
 * surviving reloads: what client_sdk.state keeps in its state directory, in ONE entry
 *
 *     key   "flaas-client:<coordinator origin>:<job id>"   (stateKey)
 *     value JSON { version, credentials: {client_id, token, name}, enrolment (a drawn
 *           credential not answered yet), stats, accepted: {round, sha256}, pending: {round,
 *           sha256, info, update (base64)}, private (base64) }
 *
 * `private` is safetensors bytes of the tensors that never leave the device (FedSA's B and
 * head). One `setItem` replaces the whole entry, so a reload at any point finds the old state
 * or the new one, never half of each: a trained update and the private tensors it produced
 * are stored together, before the upload starts (client_sdk.state's crash-safe order, made
 * atomic). A reloaded page re-sends the pending bytes (same SHA-256, so the coordinator counts
 * them once) instead of training the round again.
 */

import { fromBase64, sha256Hex, toBase64, toBase64Url } from "./encoding.js";
import type { ComplexityStats } from "./stats.js";

export const STATE_VERSION = 1;

export interface Credentials {
  client_id: string;
  token: string;
  name: string | null;
}

/** What re-sending a pending update needs (client_sdk.client's pending info). */
export interface PendingInfo {
  round_id: string;
  upload_url: string;
  n_samples: number;
  rank: number;
  metrics: Record<string, number>;
  /** What the page shows of the round: loss and accuracy after training, its seconds. */
  summary: { loss: number; accuracy: number; seconds: number };
}

interface Stored {
  version: number;
  credentials: Credentials | null;
  enrolment: string | null;
  stats: ComplexityStats | null;
  accepted: { round: number; sha256: string } | null;
  pending: { round: number; sha256: string; info: PendingInfo; update: string } | null;
  private: string | null;
}

export function stateKey(baseUrl: string, jobId: string): string {
  return `flaas-client:${baseUrl.replace(/\/+$/, "")}:${jobId}`;
}

export class DeviceState {
  private state: Stored;

  constructor(private readonly storage: Storage, readonly key: string) {
    const raw = storage.getItem(key);
    const empty: Stored = { version: STATE_VERSION, credentials: null, enrolment: null, stats: null, accepted: null, pending: null, private: null };
    if (raw === null) {
      this.state = empty;
      return;
    }
    const parsed = JSON.parse(raw) as Stored;
    if (parsed.version !== STATE_VERSION) {
      throw new Error(`stored state ${key} has version ${parsed.version}; this client reads version ${STATE_VERSION}`);
    }
    this.state = { ...empty, ...parsed };
  }

  private write(change: Partial<Stored>): void {
    const next = { ...this.state, ...change };
    this.storage.setItem(this.key, JSON.stringify(next));
    this.state = next;
  }

  get credentials(): Credentials | null {
    return this.state.credentials;
  }

  get stats(): ComplexityStats | null {
    return this.state.stats;
  }

  /** The credential to enrol with: drawn once (256 random bits) and stored before the
   * enrolment is sent, so that the same enrolment sent again after a lost answer or a reload
   * gets the same client back (docs/protocol.md, "2. Enrol"). `saveCredentials` replaces it. */
  enrolmentCredential(): string {
    if (this.state.enrolment !== null) return this.state.enrolment;
    const enrolment = "flc_" + toBase64Url(crypto.getRandomValues(new Uint8Array(32)));
    this.write({ enrolment });
    return enrolment;
  }

  saveCredentials(credentials: Credentials, stats: ComplexityStats): void {
    this.write({ credentials, stats, enrolment: null });
  }

  /** True when an upload for `round` (or a later one) was accepted. */
  alreadyUploaded(round: number): boolean {
    return this.state.accepted !== null && this.state.accepted.round >= round;
  }

  /** Remember that the coordinator accepted this round's update; forgets the pending one. */
  recordAccepted(round: number, sha256: string): void {
    this.write({ accepted: { round, sha256 }, pending: null });
  }

  /** Keep a trained, not yet accepted update and the private tensors it leaves, together. */
  savePending(round: number, update: Uint8Array, sha256: string, info: PendingInfo, privateBytes: Uint8Array | null): void {
    this.write({
      pending: { round, sha256, info, update: toBase64(update) },
      private: privateBytes === null ? this.state.private : toBase64(privateBytes),
    });
  }

  /** The pending update (checked against its SHA-256), or null. */
  async pending(): Promise<{ round: number; update: Uint8Array; sha256: string; info: PendingInfo } | null> {
    const pending = this.state.pending;
    if (pending === null) return null;
    const update = fromBase64(pending.update);
    if ((await sha256Hex(update)) !== pending.sha256) return null;
    return { round: pending.round, update, sha256: pending.sha256, info: pending.info };
  }

  clearPending(): void {
    if (this.state.pending !== null) this.write({ pending: null });
  }

  /** The private tensors as safetensors bytes, or null before any were trained. */
  get privateBytes(): Uint8Array | null {
    return this.state.private === null ? null : fromBase64(this.state.private);
  }
}
