import assert from "node:assert/strict";
import { test } from "node:test";
import { sha256Hex } from "../src/encoding.js";
import { DeviceState, stateKey, type PendingInfo } from "../src/state.js";

/** The Storage interface over a Map (what localStorage is, without a page). */
class MemoryStorage implements Storage {
  private items = new Map<string, string>();
  get length() { return this.items.size; }
  key(i: number) { return [...this.items.keys()][i] ?? null; }
  getItem(k: string) { return this.items.get(k) ?? null; }
  setItem(k: string, v: string) { this.items.set(k, String(v)); }
  removeItem(k: string) { this.items.delete(k); }
  clear() { this.items.clear(); }
}

const INFO: PendingInfo = {
  round_id: "r2", upload_url: "/api/v1/rounds/r2/update", n_samples: 9, rank: 4, metrics: { train_loss: 1 },
  summary: { loss: 1, accuracy: 0.5, seconds: 0.1 },
};

test("a reloaded page finds the credentials, the pending update and the private tensors", async () => {
  const storage = new MemoryStorage();
  const key = stateKey("http://coordinator:8000/", "job-1");
  assert.equal(key, "flaas-client:http://coordinator:8000:job-1");
  const state = new DeviceState(storage, key);
  state.saveCredentials({ client_id: "c1", token: "t", name: "web-0" }, { n_samples: 9, label_entropy: 0.5, gini_simpson: 0.4, loss_entropy: null });
  const update = Uint8Array.of(5, 6, 7);
  state.savePending(2, update, await sha256Hex(update), INFO, Uint8Array.of(9, 9));
  assert.equal(storage.length, 1); // one entry: replaced whole at every change

  const reloaded = new DeviceState(storage, key);
  assert.deepEqual(reloaded.credentials, { client_id: "c1", token: "t", name: "web-0" });
  const pending = await reloaded.pending();
  assert.deepEqual(pending && [pending.round, [...pending.update], pending.info], [2, [5, 6, 7], INFO]);
  assert.deepEqual([...reloaded.privateBytes!], [9, 9]);

  reloaded.recordAccepted(2, pending!.sha256);
  const after = new DeviceState(storage, key);
  assert.equal(await after.pending(), null);
  assert.ok(after.alreadyUploaded(2) && after.alreadyUploaded(1) && !after.alreadyUploaded(3));
  assert.deepEqual([...after.privateBytes!], [9, 9]); // the private tensors stay
});

test("a pending update whose bytes do not match its SHA-256 is not re-sent", async () => {
  const storage = new MemoryStorage();
  const state = new DeviceState(storage, "k");
  state.savePending(1, Uint8Array.of(1), "0".repeat(64), INFO, null);
  assert.equal(await state.pending(), null);
  assert.equal(state.privateBytes, null);
});

test("state of another version is refused, not misread", () => {
  const storage = new MemoryStorage();
  storage.setItem("k", JSON.stringify({ version: 99 }));
  assert.throws(() => new DeviceState(storage, "k"), /version 99/);
});

test("the enrolment credential is drawn once, survives a reload and is replaced on enrolment", () => {
  const storage = new MemoryStorage();
  const key = stateKey("http://coordinator:8000", "job-1");
  const drawn = new DeviceState(storage, key).enrolmentCredential();
  assert.match(drawn, /^flc_[A-Za-z0-9_-]{43}$/); // the coordinator's format, 256 bits
  assert.equal(new DeviceState(storage, key).enrolmentCredential(), drawn); // after a reload
  new DeviceState(storage, key).saveCredentials({ client_id: "c1", token: drawn, name: null },
    { n_samples: 9, label_entropy: 0.5, gini_simpson: 0.4, loss_entropy: null });
  assert.notEqual(new DeviceState(storage, key).enrolmentCredential(), drawn); // a next enrolment
});
