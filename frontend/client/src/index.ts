/**
 * The FLaaS browser client: join a job with its join token, train the built-in digits model's
 * LoRA adapter on data in the page, upload safetensors updates; nothing but the update and the
 * enrolment statistics leaves the device. Built into server/join/static/flaas-client.js.
 */

export { joinJob, type ClientEvent, type DeviceData, type JoinOptions } from "./join.js";
export { digitsSample, parseDataFile } from "./data.js";
export { complexityStats } from "./stats.js";
export { stateKey } from "./state.js";
export { decode as decodeSafetensors, encode as encodeSafetensors } from "./safetensors.js";
