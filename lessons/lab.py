# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab · play with parallel calls
#
# One panel, every knob of the lessons: how many prompts, which strategy, how many workers, answers in input order
# or in completion order, how slow and how erratic the model is, and what goes wrong (failures, a rate limit,
# calls that hang). Press **Run** and watch: answers appear as your code receives them, the progress bar and the
# number of calls in flight move, and the timeline and summary table appear at the end. Each run is kept, so the
# next picture compares it with the ones before.
#
# Run the cell below (or *Run → Run All Cells*), then try the experiments under the panel.

# %%
# NBVAL_IGNORE_OUTPUT
from helpers import connect
from helpers.lab import Lab

lab = Lab(connect(seed=0))
lab

# %% [markdown]
# ## Experiments to try
#
# Before each run, **predict** what the picture will look like. Then run it.
#
# 1. **One worker.** Strategy *threads*, workers 1, 6 prompts. What shape does the timeline have? Now workers 6.
# 2. **The order your code sees.** Latency profile *long tail*, 12 prompts, 4 workers. Run with *input order*, then
#    with *completion order*. Watch the answers list: in input order, a fast answer waits for a slow one before it.
# 3. **The staircase.** Latency profile *fixed*, 12 prompts, 3 workers, then 4, then 6. How does the wall time
#    change? Can you predict it before you press Run? (`ceil(prompts / workers) × latency`)
# 4. **Failures.** Failure rate 0.3. Do the other calls care? Where do the failed calls show up in the picture?
# 5. **Hangs.** Switch on *hangs*, 10 prompts, 3 workers. A hung call holds its worker until the client gives up
#    (3 s here). What does that do to the wall time? What would it do without a timeout?
# 6. **Rate limit.** Switch on the rate limit (20 requests per minute), 30 prompts, 10 workers. Run twice. What
#    happens to the calls after the first twenty? (Lesson 06 adds retries with backoff.)
# 7. **All four.** Strategy *all four, side by side*: sequential, threads, asyncio and pydantic-ai on the same
#    prompts. Which are about equal, and why?
# 8. **Cancel.** 30 prompts, 1 worker, latency 1 s. Press Run, then Cancel after a few answers. What is kept?
#
# Against a real provider (with `LLM_BASE_URL` set) the panel caps workers at 3 and turns off the simulator's
# latency and fault controls: the provider brings its own.
#
# ## For instructors: drive the panel from code
#
# Every control is an attribute, so a demo can be scripted. This runs six prompts on one worker and then on six,
# and checks what the pictures show, counted where it cannot be wrong: by the server, which sees every request
# arrive (against a real provider, by the client's own records). Calls of half a second overlap for sure when six
# threads start them at once, even on a busy machine.

# %%
wide = min(6, lab.workers.max)  # 6, or 3 against a real provider
lab.prompts.value, lab.strategy.value, lab.profile.value, lab.latency.value = wide, "threads", "fixed", 0.5
peaks = []
for workers in (1, wide):
    lab.workers.value = workers
    if lab.target.is_simulator:
        lab.target.simulator.reset()  # count this run's requests only
    lab.run_button.click()
    lab.wait()
    seen = lab.target.simulator.stats(records=False) if lab.target.is_simulator else None
    peaks.append(seen["peak_in_flight"] if seen else lab.report.peak_in_flight)
one_worker, six_workers = lab.reports[-2:]
assert peaks[0] == 1 and (peaks[1] == wide if lab.target.is_simulator else peaks[1] <= wide)
if lab.target.is_simulator:
    assert one_worker.wall > 0.9 * wide * 0.5  # one worker: the calls of 0.5 s one after another
print(f"{wide} workers:", six_workers.n, "calls,", len(six_workers.failures), "failed; at most", peaks[1], "at once")
