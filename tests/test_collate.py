import numpy as np

from agentrl.data.collate import advantage_input, collate
from agentrl.types import Task, Trajectory, Turn


def _traj(i, group, turns, reward):
    t = Trajectory(id=f"t{i}", group_id=group, task=Task(id=group, env_id="x"), prompt_ids=[1, 2, 3])
    for k, (a, o) in enumerate(turns):
        t.turns.append(Turn(action_ids=a, action_logprobs=[-0.5] * len(a), obs_ids=o, reward=float(k == len(turns) - 1)
                            * reward, anchor=f"s{k}", action_valid=k != 1))
    t.reward = reward
    return t


def test_advantages_broadcast_onto_each_turns_action_tokens():
    a = _traj(0, "g", [([10, 11], [20]), ([12], [21, 22]), ([13, 14, 15], [])], 1.0)
    b = _traj(1, "g", [([16], [])], 0.0)
    inp = advantage_input([a, b])
    assert inp.turn_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert inp.turn_rewards[0, 2] == 1.0 and inp.action_valid[0, 1] == False  # noqa: E712
    assert inp.anchors == [["s0", "s1", "s2"], ["s0"]]
    adv = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]])
    batch = collate([a, b], pad_id=0, turn_adv=adv)
    assert batch.input_ids[0].tolist() == [1, 2, 3, 10, 11, 20, 12, 21, 22, 13, 14, 15]
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    assert batch.advantages[0].tolist() == [0, 0, 0, 1, 1, 0, 2, 0, 0, 3, 3, 3]
    assert batch.input_ids[1].tolist()[:4] == [1, 2, 3, 16] and batch.attention_mask[1].sum() == 4
    assert batch.advantages[1].tolist()[:5] == [0, 0, 0, -1, 0]
    assert batch.old_logprobs[0, 3] == -0.5 and batch.old_logprobs[0, 5] == 0
    assert batch.group_ids.tolist() == [0, 0]
