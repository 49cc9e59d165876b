"""The backend simulator: an OpenAI-compatible server that emulates the demo world's chips.

It is a simulator and says so everywhere: `system_fingerprint` is
"tesseract-simulator", every response carries `x-simulator: tesseract`, and the
metrics expose `tesseract_simulator_info`. It is a standalone process (no Django):

    python -m backends.simulator --port 8100 [--host 127.0.0.1]
        [--gateway-region westeurope] [--time-scale 1.0] [--deployments all]

URL layout (one process, many deployments of `backends.world.demo_world()`):

    GET  /health                           the process
    GET  /deployments                      every simulated deployment and its base URL
    GET|POST /control/time_scale           {"time_scale": x}; 0 = no delay at all
    POST /d/<slug>/v1/chat/completions     OpenAI shapes, streamed (SSE) or not
    POST /d/<slug>/v1/completions
    GET  /d/<slug>/v1/models
    GET  /d/<slug>/health                  200 {"status": "ok", "simulator": true,
                                           "time_scale": x} after one RTT, or 503 at
                                           once when down/loading/unloaded
    GET  /d/<slug>/metrics                 Prometheus text with vLLM's metric names
    GET|POST /d/<slug>/control             state; faults, slots, model load/unload

Control (POST JSON to /d/<slug>/control; every field optional, `fault` applied first
and resetting the others):

    {"fault": "none"|"error"|"slow"|"down"|"hang"|"rate_limited",
     "error_rate": 0..1,          # "error": 500 before the first token, with this chance
     "slow_factor": x,            # "slow": every delay of this deployment × x
     "error_after_tokens": n,     # streams drop the connection after n tokens; a
                                  # non-streamed request gets a 500 (null clears it)
     "stall_after_tokens": n,     # streams send n tokens, then nothing until the client
                                  # gives up (the slot stays held); a non-streamed
                                  # request never answers (null clears it)
     "loaded": false|true,        # unload (503 model_not_loaded) / load (cold start)
     "concurrency_slots": n, "max_waiting": n,
     "retry_after_s": x,          # "rate_limited": every generation gets 429 with
                                  # this Retry-After (default 1)
     "persona": {...}|null}       # behave like a real provider: its auth header and
                                  # keys, its own model id, its error bodies, a server
                                  # that ignores include_usage (see `persona.py`)

"down" answers every request (and the health check) with 503 at once; "hang" never
answers completions, models or health until the client gives up, and holds no slot. Like the
4xx errors and the 503s of an unloaded or loading model, "down" pays no network
delay; the injected 500 and the 503 `overloaded` come from the deployment, so they
arrive after one RTT. Metrics and control always answer, whatever the fault.

Timing model (every duration below is multiplied by the time scale, and by
`slow_factor` under the "slow" fault; time scale 0 answers at once, bypassing the queue):

1. Network: RTT = `world.rtt_ms(gateway_region, deployment region)`. Half of it is
   slept before the request reaches the deployment, the other half before each byte
   of the answer leaves (so the first byte arrives one full RTT after the compute
   alone would have produced it). Health probes sleep one RTT and report the time
   scale they slept at, so a prober can divide the wall time it measured by it
   (`backends.probes` does).
2. Queue: at most `concurrency_slots` sequences compute at once (a request for `n`
   choices is `n` of them, as in vLLM, at most all the slots); the rest wait
   (`vllm:num_requests_waiting`), the lowest `priority` first and in arrival order
   among equals, as vLLM's `--scheduling-policy priority` orders them (a request that
   sends none has priority 0); past `max_waiting` (4 × slots) a request gets 503.
3. TTFT after admission = `ttft_floor_ms` + prompt_tokens / `prefill_tokens_per_s`.
4. Decode: then one token every 1 / `decode_tokens_per_s` seconds; streams send the
   tokens that are due at most every 10 ms (one chunk per token), to save CPU.
5. The slot is freed when the last token is computed (or the client disconnects);
   non-streamed answers arrive at last token + RTT/2.

Cold start (`loaded: true` after `loaded: false`): 10 s + bf16 weights (2 bytes per
parameter) at 4 GB/s, i.e. 8B -> 14 s, 70B -> 45 s, 405B -> 212.5 s, times the time
scale; meanwhile requests get 503 `model_loading` with Retry-After.

Tokens: prompt tokens ≈ ceil(characters of all message contents / 4), at least 1;
the output is `max_completion_tokens` or `max_tokens` (default 16) filler words, one
token each, chosen deterministically from the request's text and `seed`.
Metric durations are measured at the deployment, network excluded, as vLLM's (TTFT:
arrival to first token, queue included; e2e: arrival to last token), in wall-clock
seconds (so already multiplied by the time scale).
"""

from backends.world import cold_start_s  # the world's physics, which the simulator emulates

from .app import MidStreamAbort, Simulator, create_app

__all__ = ["MidStreamAbort", "Simulator", "cold_start_s", "create_app"]
