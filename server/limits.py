"""The fixed limits of what a request may carry: bounds of the protocol itself, the same for
every deployment (README, "Configuration", fixed limits). What a deployment tunes (upload and
header sizes, clients per job, page size, timeouts) is a field of ``server.config.Settings``.

Constants, not settings, because the request schemas validate against them at import.
"""

from __future__ import annotations

MAX_RANK = 1024  # a LoRA rank: r_min, r_max, a fixed rank, a budget's mean rank
MAX_DEADLINE_S = 7 * 24 * 3600  # any timeout or deadline a job spec names
MAX_SAMPLES = 10**12  # a client's n_samples (enrolment, Flaas-Num-Samples), reference samples
MAX_UPLOAD_BUDGET = 1 << 50  # bytes per round: a petabyte, beyond any real round
MAX_METRICS = 64  # entries of the Flaas-Metrics header's object
MAX_METADATA_ENTRIES = 64  # entries of an uploaded safetensors file's __metadata__
