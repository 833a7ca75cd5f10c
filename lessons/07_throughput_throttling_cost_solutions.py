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
# # 07 · Throughput, throttling and cost: solutions
#
# Worked solutions to the exercises of `07_throughput_throttling_cost.ipynb`. The first cell rebuilds the lesson's
# setup: the same simulator settings and `short_call`.

# %%
from helpers import QuotaExceeded, QuotaGuard, Throttle, ask, connect, run_threads
from helpers.exercises import check

target = connect(seed=6, profile="fixed", latency=0.05)
client = target.client()
sixteen = [f"Reply: {i}" for i in range(16)]


def short_call(prompt: str) -> str:
    return ask(client, target.model, prompt, max_tokens=20)  # 10 tokens of prompt + 20 for the answer


# %% [markdown]
# **Exercise 7.1.** 48,000 tokens a minute at 30 tokens a call is 1,600 calls a minute (26.7 a second). A throttle
# at 90 % of that, 1,440 calls a minute, starts a call every 1/24 s: the server's bucket refills a call's worth
# faster than that, so no call is refused, and the run gets 90 % of the limit. At exactly 100 % the two clocks
# would race, and now and then a call would arrive a moment before its tokens.

# %%
throttle = Throttle(rpm=0.9 * 48_000 / 30)

# %%
if target.is_simulator and throttle is not None:
    target.simulator.configure(tpm=48_000, burst=0.25)  # a quarter of a second's worth: 200 tokens
    target.simulator.reset()

    def exercise_call(prompt: str) -> str:
        throttle.acquire()
        return short_call(prompt)

    exercise = run_threads(exercise_call, sixteen, workers=16)
    exercise_refused = target.simulator.stats(records=False)["by_status"].get("429", 0)
    target.simulator.configure(tpm=None, burst=60)
    right = exercise_refused == 0 and exercise.n / exercise.wall >= 0.75 * 48_000 / 60 / 30
else:
    right = throttle is not None and throttle.rpm is not None and throttle.rpm <= 48_000 / 30
check(
    right,
    "no 429s, close to the limit: the throttle waits so the server does not have to refuse.",
    "48,000 tokens a minute at 30 tokens a call is 1,600 calls a minute; throttle a little below: Throttle(rpm=...).",
)

# %% [markdown]
# **Exercise 7.2.** Both limits must hold: at most 100 calls, and at most 50,000 tokens, which at 700 a call is
# `50_000 // 700 = 71` calls. The smaller one wins. `check_run` agrees: 71 fits, 72 does not.

# %%
largest = min(100, 50_000 // 700)
for n in (largest, largest + 1):
    try:
        QuotaGuard(max_calls=100, max_tokens=50_000).check_run(n, est_tokens_per_call=700)
        print(n, "calls: fits")
    except QuotaExceeded:
        print(n, "calls: refused")

# %%
fresh = QuotaGuard(max_calls=100, max_tokens=50_000)
fits = False
try:
    fresh.check_run(largest, est_tokens_per_call=700)
    fits = True
    fresh.check_run(largest + 1, est_tokens_per_call=700)
    fits = False  # one more would fit too: not the largest
except (QuotaExceeded, TypeError, ValueError):
    pass
check(
    isinstance(largest, int) and fits,
    "50,000 // 700 = 71 calls: here the tokens run out before the calls do.",
    "both limits count: at most 100 calls, and calls × 700 tokens at most 50,000.",
)
