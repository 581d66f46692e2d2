"""Every prompt the reflector sends, in one place. Change a prompt => bump PROMPTS_VERSION (it is stored with each
operation in the library's ops log, so a library records which prompts wrote it).

Each prompt is a (system, user) pair of str.format templates. The reflector fills them; the model answers with
JSON only (the summary prompt: plain text). Placeholders are documented next to each template.
"""
from __future__ import annotations

PROMPTS_VERSION = "memory-v1"

SYSTEM = ("You are an expert at analysing how an AI agent solved tasks and at distilling short, general, reusable "
          "experiences from it. Follow the requested output format exactly.")

# {task}: the task prompt; {trajectory}: the agent's turns (actions and observations); {outcome}: correct/wrong
SUMMARY = """Summarise the agent's attempt below step by step: what it did at each step, which information it used,
and where its reasoning went right or wrong. Be concise (at most 120 words). Plain text, no JSON.

## Task
{task}

## Agent's attempt
{trajectory}

## Outcome
{outcome}
"""

# {task}, {reference}: the reference answer; {summaries}: numbered summaries, each with its outcome;
# {max_lessons}, {max_words}; {lessons}: the current library rendered as [G0]. ... lines (or "(empty)")
CRITIQUE = """Several attempts at the same task got different outcomes. Compare the successful and the failed
attempts against the reference answer and find what made the difference (the semantic advantage).
Then state at most {max_lessons} experiences that would make a future attempt at a similar task succeed.
Each experience: one general, actionable sentence of at most {max_words} words; no task-specific numbers unless
they are a fact about the environment that holds for other tasks; do not repeat an existing experience.

## Task
{task}

## Reference answer
{reference}

## Attempts
{summaries}

## Existing experiences
{lessons}

Answer with JSON only: {{"experiences": ["...", "..."]}} (an empty list when nothing new was learned).
"""

# {lessons}: the library; {experiences}: the new experiences as a JSON list; {max_words}
GROUP_OPS = """Decide how each new experience changes the library of experiences.
For each new experience choose one operation:
- ADD: it is new; give its text.
- UPDATE: it refines an existing experience; give the existing id (e.g. "G3") and the improved text.
- DELETE: it shows an existing experience is wrong or harmful; give the existing id.
- NONE: it is already covered.
Texts are at most {max_words} words.

## Library
{lessons}

## New experiences
{experiences}

Answer with JSON only: {{"operations": [{{"op": "ADD", "text": "..."}}, {{"op": "UPDATE", "id": "G0", "text": "..."}},
{{"op": "DELETE", "id": "G1"}}, {{"op": "NONE"}}]}}
"""

# {lessons}: the library; {operations}: every group's proposed operations as a JSON list; {max_words}
BATCH_MERGE = """Several reviewers proposed changes to the same library of experiences. Merge them into one
consistent list of operations:
- if one reviewer deletes an experience and another updates it, keep the DELETE;
- merge ADDs that say the same thing into one ADD (or into an UPDATE of a similar existing experience);
- merge several UPDATEs of one experience into one UPDATE;
- keep texts general, at most {max_words} words each, with no duplicates.

## Library
{lessons}

## Proposed operations
{operations}

Answer with JSON only: {{"operations": [{{"op": "ADD" | "UPDATE" | "DELETE", "id": "G<n>" (UPDATE/DELETE only),
"text": "..."}}]}}
"""

RETRY = ("Your previous answer could not be used: {error}. Answer again with JSON only, exactly in the requested "
         "format.")

# Injection into the policy's system prompt (ALGORITHMS.md › Training-free GRPO).
INJECTION_HEADER = ("When solving problems, you MUST first carefully read and understand the helpful instructions "
                    "and experiences:")
