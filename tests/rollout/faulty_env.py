"""A Calculator env that misbehaves on request, for the env-worker tests: an action containing CRASH kills the
process it runs in (a segfaulting browser, an OOM-killed sandbox), one containing HANG blocks for a minute.
Made by id "tests.rollout.faulty_env:agentrl-test/Faulty-v0" (gymnasium imports this module first, in whichever
process makes the env)."""
import os
import time

import gymnasium

from agentrl.envs.calculator import CalculatorEnv


class FaultyEnv(CalculatorEnv):
    def step(self, action):
        if "CRASH" in action:
            os._exit(3)
        if "HANG" in action:
            time.sleep(60)
        return super().step(action)


ENV_ID = "agentrl-test/Faulty-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=FaultyEnv)
