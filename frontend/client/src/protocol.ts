/**
 * The calls a client makes (server/api/routes/clients.py, rounds.py; docs/upload-contract.md)
 * and the JSON they exchange, as client_sdk.api makes them.
 */

import { fromBase64 } from "./encoding.js";
import { Coordinator, LONG_POLL_MARGIN_S } from "./http.js";
import type { ComplexityStats } from "./stats.js";

export interface ModelSpec {
  source: string;
  task_type: string;
  target_modules: string[] | string;
  modules_to_save: string[];
  lora_dropout: number;
  config_sha256: string | null;
}

export interface Training {
  epochs: number | null;
  steps: number | null;
  lr: number;
  batch_size: number;
  gradient_accumulation_steps: number;
  optimizer: string;
}

export interface JobModel {
  job_id: string;
  name: string;
  strategy: string;
  model: ModelSpec | null;
  training: Training;
}

export interface Enrolled {
  client_id: string;
  job_id: string;
  credential: string;
  rank: number | null;
}

export interface TrainTask {
  action: "train";
  job_id: string;
  round_id: string;
  round_number: number;
  deadline_at: string;
  rank: number;
  lora_alpha: number;
  use_rslora: boolean;
  adapter_type: string;
  strategy: string;
  shared_parts: string[];
  frozen_parts: string[];
  training: Training;
  model: ModelSpec | null;
  seed: number;
  adapter_url: string;
  /** The starting adapter itself (base64 safetensors) when it is small enough to travel in the
   * answer (`FLAAS_INLINE_ADAPTER_MAX_BYTES`); null: download `adapter_url`. */
  adapter: string | null;
  upload_url: string;
}

export type Task =
  | { action: "wait"; retry_after: number; reason: string }
  | TrainTask
  | { action: "finished"; status: string; reason: string | null };

const JSON_HEADERS = { "Content-Type": "application/json" };

/** `GET /api/v1/jobs/{id}/model` with the join token: what to load before enrolling. */
export function jobModel(api: Coordinator, jobId: string, joinToken: string): Promise<JobModel> {
  return api.json("GET", `/api/v1/jobs/${encodeURIComponent(jobId)}/model`, { token: joinToken });
}

/** `POST /api/v1/jobs/{id}/clients`: enrol with the statistics and the credential the device
 * drew (safe to send again: the same enrolment answers 200 with the same client). */
export function enrol(api: Coordinator, jobId: string, joinToken: string, body: {
  stats: ComplexityStats; name?: string; model_sha256: string; credential: string;
}): Promise<Enrolled> {
  return api.json("POST", `/api/v1/jobs/${encodeURIComponent(jobId)}/clients`, {
    token: joinToken, headers: JSON_HEADERS, body: JSON.stringify(body),
  });
}

/** `GET /api/v1/clients/me/task?wait=...`: the coordinator may hold it `waitS` seconds. */
export function task(api: Coordinator, waitS: number): Promise<Task> {
  return api.json("GET", `/api/v1/clients/me/task?wait=${waitS}`, { timeoutS: waitS + LONG_POLL_MARGIN_S });
}

/** The round's starting adapter, cut to this client's rank (safetensors bytes): the one the
 * task carried, or downloaded from `adapter_url`. */
export async function startingAdapter(api: Coordinator, t: TrainTask): Promise<Uint8Array> {
  if (t.adapter) return fromBase64(t.adapter);
  return (await api.request("GET", t.adapter_url)).body;
}

/** `PUT` an update: 201 accepted, 200 an identical retry of an accepted one. */
export async function upload(api: Coordinator, url: string, update: Uint8Array, sha256: string,
  nSamples: number, metrics: Record<string, number>): Promise<number> {
  const { status } = await api.request("PUT", url, {
    body: update,
    headers: {
      "Content-Type": "application/octet-stream",
      "Flaas-Num-Samples": String(nSamples),
      "Flaas-Content-Sha256": sha256,
      "Flaas-Metrics": JSON.stringify(metrics),
    },
  });
  return status;
}
