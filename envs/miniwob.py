"""MiniWoB++ web tasks in a real headless Chromium, as text: read the page, act with click / type / press.

Wraps the `miniwob` package (Farama MiniWoB++): one `miniwob.environment.MiniWoBEnvironment` per env, started
lazily on the first reset and released by close(). A task is (MiniWoB task id, page seed); the seed feeds
MiniWoB's own `Math.seedrandom`, so a task always shows the same page, and the train / held-out split is a hash
of "task-id:seed" (`split_of`).

Observation (reset prompt and every tool result): the instruction and the page's DOM, one element a line,
indented by depth: `[ref] tag#id.class "text" value=... (left,top widthxheight) focused tampered`. Text
fragments in mixed content show as `"text" (left,top ...)` without a ref (they cannot be clicked). Example:

    Task: Enter "Myron" into the text field and press Submit.
    [2] div#wrap (0,0 160x210)
     [3] div#area (0,50 160x87)
      [4] div#form (17,64 141x71)
       [5] input_text#tt value="" (17,64 128x21)
       [6] button#subbtn.secondary-action "Submit" (17,104 95x31)

Tools (one call per reply): click(ref), type(ref, text) (sets a field: click it, replace its content by typing),
press(key). With the tags parser: `<click>6</click>`, `<type>5 Myron</type>` (ref, a space, the text),
`<press>Enter</press>`. Reward: MiniWoB's raw reward mapped to 0/1 (1.0 when raw > 0, i.e. MiniWoB's success),
given when the page ends the episode; MiniWoB's 10 s wall-clock limit is lifted (`time_limit_s`), so the episode
ends by the page or by max_turns. Optional screenshots (`screenshot_dir`) are saved as PNG after reset and each
step, for vision-language models (info["screenshot"] holds the path).

(Over 500 lines on purpose: the browser glue, the page text, the tag parser and the experts are one unit.)
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import weakref
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from agentrl.env.base import ToolEnv, content_id, sanitize, split_of
from agentrl.env.parsers import ParsedAction, TagParser
from agentrl.env.tools import ToolCall
from agentrl.types import Task

# Tasks with an expert (scripted solver) for SFT demonstrations; any other MiniWoB task id works without one.
CURATED = ("click-test-2", "click-button", "click-link", "focus-text", "enter-text", "click-checkboxes",
           "click-option", "login-user")
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox",  # no sandbox: root in containers; the pages are the package's local files
    "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--no-default-browser-check", "--window-size=500,400",
)
_NO_LIMIT_MS = 2_000_000_000  # JavaScript's setTimeout caps at 2**31 - 1 ms; this is ~23 days
_KEY_NAMES = ("Enter", "Tab", "Backspace", "Delete", "Escape", "Space", "Home", "End", "PageUp", "PageDown",
              "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Insert")
_MODIFIERS = {"alt": "A-", "ctrl": "C-", "control": "C-", "meta": "M-", "cmd": "M-", "shift": "S-"}


# ----------------------------------------------------------------------------------------------- browser
def find_browser() -> Optional[tuple[str, str]]:
    """(chromium binary, chromedriver) from MINIWOB_CHROME_BINARY / MINIWOB_CHROMEDRIVER or the PATH; None if
    either is missing."""
    binary = os.environ.get("MINIWOB_CHROME_BINARY") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("MINIWOB_CHROMEDRIVER") or shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@functools.lru_cache(maxsize=None)
def task_names() -> tuple[str, ...]:
    """Every MiniWoB task id this package can load (the HTML pages shipped with `miniwob`)."""
    return tuple(sorted(f[:-5] for f in os.listdir(_html_dir()) if f.endswith(".html")))


def _html_dir() -> str:
    import miniwob  # lazy: selenium and the package load only when MiniWoB is used

    return os.path.join(os.path.dirname(miniwob.__file__), "html", "miniwob")


def _open_browser(subdomain: str, time_limit_ms: int):
    """A MiniWoBEnvironment on `subdomain` whose Chromium starts with CHROME_FLAGS (classes built lazily)."""
    from miniwob.action import ActionSpaceConfig, ActionTypes
    from miniwob.constants import ALL_POSSIBLE_KEYS
    from miniwob.environment import MiniWoBEnvironment
    from miniwob.fields import get_field_extractor
    from miniwob.selenium_instance import SeleniumInstance
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.wait import WebDriverWait

    found = find_browser()
    if found is None:
        raise RuntimeError("MiniWoB needs Chromium and chromedriver: `apt-get install chromium chromium-driver`, "
                           "or set MINIWOB_CHROME_BINARY and MINIWOB_CHROMEDRIVER")

    class Instance(SeleniumInstance):
        def create_driver(self):
            options = webdriver.ChromeOptions()
            for flag in CHROME_FLAGS:
                options.add_argument(flag)
            options.binary_location = found[0]
            self.driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
            self.load(self.url)

        def load(self, url: str) -> None:
            self.url = url
            self.driver.get(url)
            WebDriverWait(self.driver, 10).until(ec.presence_of_element_located((By.ID, self.SYNC_SCREEN_ID)))
            self.driver.execute_script(f"core.EPISODE_MAX_TIME = {int(time_limit_ms)};")
            self.inner_width, self.inner_height = self.driver.execute_script(
                "return [window.innerWidth, window.innerHeight];")

    class Browser(MiniWoBEnvironment):
        def _hard_reset_instance(self):
            if getattr(self, "instance", None):
                self.instance.close()
            self.instance = Instance(index=0, **self.instance_kwargs)
            self.instance.start()

        def goto(self, name: str) -> None:
            """Load another task's page in the same browser."""
            if name != self.subdomain:
                self.subdomain = self.instance_kwargs["subdomain"] = name
                self.instance.field_extractor = get_field_extractor(name)
                self.instance.load(f"file://{_html_dir()}/{name}.html")

    config = ActionSpaceConfig(action_types=[ActionTypes.CLICK_ELEMENT, ActionTypes.PRESS_KEY,
                                             ActionTypes.TYPE_TEXT, ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT],
                               allowed_keys=ALL_POSSIBLE_KEYS, text_max_len=256)
    return Browser(subdomain=subdomain, action_space_config=config)


def _quit(holder: dict) -> None:
    browser = holder.pop("browser", None)
    if browser is not None:
        try:
            browser.close()
        except Exception:  # noqa: BLE001 - a browser that is already gone is released
            pass


def normalize_key(key: str) -> str:
    """"Enter" / "<Enter>" / "ctrl+a" / "C-a" / "a" -> MiniWoB's key syntax ("<Enter>", "C-a", "a").
    Raises ValueError for anything else."""
    text, mods = str(key).strip(), set()
    while True:
        m = re.match(r"^(alt|ctrl|control|meta|cmd|shift)\s*\+\s*(.+)$", text, re.I) or \
            re.match(r"^([ACMS])-(.+)$", text)
        if not m:
            break
        mods.add(_MODIFIERS.get(m.group(1).lower(), m.group(1) + "-"))
        text = m.group(2)
    name = text.strip("<>") if len(text) > 1 else text
    named = next((k for k in _KEY_NAMES if k.lower() == name.lower()), None)
    base = f"<{named}>" if named else name
    out = "".join(sorted(mods)) + base
    if out not in _key_index():
        raise ValueError(f"unknown key {str(key)[:40]!r}; use a character or one of {', '.join(_KEY_NAMES)}, "
                         "optionally with ctrl+ / shift+ / alt+")
    return out


_KEY_INDEX: dict = {}


def _key_index() -> dict:
    """MiniWoB key string -> its index in the action config's allowed_keys (ALL_POSSIBLE_KEYS)."""
    if not _KEY_INDEX:
        from miniwob.constants import ALL_POSSIBLE_KEYS

        _KEY_INDEX.update({k: i for i, k in enumerate(ALL_POSSIBLE_KEYS)})
    return _KEY_INDEX


def _is_text_field(tag: str) -> bool:
    return tag == "textarea" or (tag.startswith("input_") and tag not in (
        "input_checkbox", "input_radio", "input_button", "input_submit", "input_reset", "input_file"))


# ----------------------------------------------------------------------------------------------- page text
def render_page(utterance: str, elements: Sequence[dict]) -> str:
    """The instruction and one line per DOM element (below <body>), indented by depth."""
    depth = {0: -2}
    lines = [f"Task: {utterance}"]
    for e in elements:
        d = depth.get(int(e["parent"]), -1) + 1
        depth[int(e["ref"])] = d
        if d >= 0:
            lines.append(" " * d + element_line(e))
    return "\n".join(lines)


def element_line(e: dict) -> str:
    ref, tag = int(e["ref"]), str(e["tag"])
    box = f"({int(e['left'][0])},{int(e['top'][0])} {int(e['width'][0])}x{int(e['height'][0])})"
    text = " ".join(str(e["text"]).split())
    if ref < 0:
        return f'"{text[:80]}" {box}'
    head = f"[{ref}] {tag}" + (f"#{e['id']}" if e["id"] else "")
    classes = str(e["classes"]).split()
    head += "".join(f".{c}" for c in classes[:5]) + ("..." if len(classes) > 5 else "")
    parts = [head]
    if text:
        parts.append(f'"{text[:80]}"')
    if tag.startswith(("input", "textarea")):
        value = str(e["value"])
        parts.append(f"checked={str(value == 'True').lower()}" if tag in ("input_checkbox", "input_radio")
                     else f'value="{value}"')
    parts.append(box)
    flags = e["flags"]
    parts += [name for name, on in (("focused", flags[0]), ("tampered", flags[1])) if on]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- parser
class MiniWoBTagParser(TagParser):
    """The tags parser, plus `<type>REF TEXT</type>`: the leading ref (optionally `[5]`, `5:`) and the text."""

    _TYPE = re.compile(r"^\s*\[?(-?\d+)\]?(?:\s*[:,]\s?|\s)(.*)$", re.DOTALL)

    def parse(self, text: str, tool_names: list[str]) -> ParsedAction:
        parsed = super().parse(text, tool_names)
        calls = []
        for c in parsed.tool_calls:
            m = self._TYPE.match(c.raw or "") if c.name == "type" else None
            calls.append(ToolCall(c.name, {"ref": m.group(1), "text": m.group(2)}, c.id) if m else c)
        parsed.tool_calls = calls
        return parsed


# ----------------------------------------------------------------------------------------------- experts
# Each expert maps (instruction, current DOM elements) to the next (tool, arguments); one action per turn.
def _refs(elements: Sequence[dict], tag: str, text: Optional[str] = None, **attrs: str) -> list[dict]:
    out = [e for e in elements if int(e["ref"]) > 0 and str(e["tag"]) == tag
           and (text is None or " ".join(str(e["text"]).split()) == text)
           and all(attr in str(e[k]).split() or str(e[k]) == attr for k, attr in attrs.items())]
    if not out:
        raise RuntimeError(f"expert: no {tag} {text or ''} {attrs or ''} on the page")
    return out


def _quoted(utterance: str, pattern: str) -> tuple[str, ...]:
    m = re.search(pattern, utterance)
    if not m:
        raise RuntimeError(f"expert: unexpected instruction {utterance!r}")
    return m.groups()


def _submit(elements: Sequence[dict], label: str = "Submit") -> tuple[str, dict]:
    return "click", {"ref": int(_refs(elements, "button", label)[0]["ref"])}


def _fill_then(elements: Sequence[dict], fields: Sequence[tuple[dict, str]], button: str) -> tuple[str, dict]:
    for e, want in fields:
        if str(e["value"]) != want:
            return "type", {"ref": int(e["ref"]), "text": want}
    return _submit(elements, button)


def _toggle_then_submit(elements: Sequence[dict], wanted: set, kind: str) -> tuple[str, dict]:
    """Click each checkbox/radio whose label text is (not) wanted and whose state is wrong, then Submit."""
    by_ref = {int(e["ref"]): e for e in elements}
    labels = {}
    for e in elements:
        if int(e["ref"]) < 0 and int(e["parent"]) in by_ref:
            labels[int(e["parent"])] = " ".join(str(e["text"]).split())
    for box in _refs(elements, kind):
        name = labels.get(int(box["parent"]), "")
        if (name in wanted) != (str(box["value"]) == "True"):
            return "click", {"ref": int(box["ref"])}
    return _submit(elements)


def _checkboxes(u: str, els: Sequence[dict]) -> tuple[str, dict]:
    (names,) = _quoted(u, r"^Select (.*) and click Submit\.$")
    return _toggle_then_submit(els, set() if names == "nothing" else set(names.split(", ")), "input_checkbox")


def _login(u: str, els: Sequence[dict]) -> tuple[str, dict]:
    user, password = _quoted(u, r'username "(.*)" and the password "(.*)"')
    name, secret = _refs(els, "input_text", id="username")[0], _refs(els, "input_password", id="password")[0]
    return _fill_then(els, [(name, user), (secret, password)], "Login")


def _click(tag: str, pattern: Optional[str] = None, **attrs: str) -> Callable:
    """Expert that clicks the `tag` element whose text is the instruction's first `pattern` group."""
    def expert(u: str, els: Sequence[dict]) -> tuple[str, dict]:
        text = _quoted(u, pattern)[0] if pattern else None
        return "click", {"ref": int(_refs(els, tag, text, **attrs)[0]["ref"])}
    return expert


def _enter_text(u: str, els: Sequence[dict]) -> tuple[str, dict]:
    return _fill_then(els, [(_refs(els, "input_text")[0], _quoted(u, r'Enter "(.*)" into')[0])], "Submit")


def _option(u: str, els: Sequence[dict]) -> tuple[str, dict]:
    return _toggle_then_submit(els, set(_quoted(u, r"^Select (.*) and click Submit\.$")), "input_radio")


EXPERTS: dict[str, Callable[[str, Sequence[dict]], tuple[str, dict]]] = {
    "click-test-2": _click("button", r"button (\w+)"), "click-button": _click("button", r'"(.*)" button'),
    "click-link": _click("span", r'link "(.*)"', classes="alink"), "focus-text": _click("input_text"),
    "enter-text": _enter_text, "click-checkboxes": _checkboxes, "click-option": _option, "login-user": _login,
}


# ----------------------------------------------------------------------------------------------- env
class MiniWoBEnv(ToolEnv):
    """MiniWoB++ web tasks in headless Chromium: read the page's DOM, act with click / type / press, reward 0/1.

    kwargs: tasks (a MiniWoB task id or a list of them; default: CURATED, the ones with an expert),
    screenshot_dir (save a PNG after reset and every step), time_limit_s (MiniWoB's page timer; None = no
    limit), max_turns (default 10), plus ToolEnv's parser, invalid_penalty, system, tool_timeout_s (default 30).
    """

    default_env_id = "agentrl/MiniWoB-v0"

    def __init__(self, tasks: Union[str, Sequence[str], None] = None, screenshot_dir: Optional[str] = None,
                 time_limit_s: Optional[float] = None, max_turns: int = 10, tool_timeout_s: float = 30.0,
                 **kwargs):
        super().__init__(max_turns=max_turns, tool_timeout_s=tool_timeout_s, **kwargs)
        if isinstance(self.parser, TagParser) and not isinstance(self.parser, MiniWoBTagParser):
            self.parser = MiniWoBTagParser()
        names = list(CURATED) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
        if not names:
            raise ValueError("tasks must name at least one MiniWoB task")
        self.task_ids = names  # validated against the package's pages when a task is built
        self.screenshot_dir = screenshot_dir
        self.time_limit_ms = _NO_LIMIT_MS if time_limit_s is None else int(1000 * float(time_limit_s))
        self._holder: dict = {}  # {"browser": MiniWoBEnvironment}; a dict so the finalizer does not hold self
        weakref.finalize(self, _quit, self._holder)
        self.elements: list[dict] = []
        self.utterance = ""
        self.page = ""  # the current observation text (utterance + DOM); "" once the page ended the episode
        self.raw_reward: Optional[float] = None  # set when the page ends the episode
        self.screenshot: Optional[str] = None
        self._episode = 0

    # ------------------------------------------------------------------ tasks
    def tools(self) -> list[Callable]:
        return [self.click, self.type, self.press]

    def build_task(self, options: dict) -> Task:
        name, seed = str(options.get("task", "")), options.get("seed", 0)
        if name not in task_names():
            raise ValueError(f"unknown MiniWoB task {name!r}; known: {', '.join(task_names())}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"options['seed'] must be an int, got {seed!r}")
        key = self.task_key({"task": name, "seed": int(seed)})
        return Task(id=content_id("miniwob", key), env_id=self.env_id, options={"task": name, "seed": int(seed)},
                    split=split_of(key, self.held_out_fraction))

    def task_key(self, options: dict) -> str:
        return f"{options['task']}:{int(options['seed'])}"

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        """A task id from `tasks` and a page seed, both uniform; only tasks of `split`."""
        while True:
            name = self.task_ids[int(rng.integers(len(self.task_ids)))]
            task = self.build_task({"task": name, "seed": int(rng.integers(2**31 - 1))})
            if task.split == split:
                return task

    def task_prompt(self, task: Task) -> str:
        return self.page

    def _example(self, name: str, **args: Any) -> str:
        if self.parser.name == "hermes":
            return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"
        if name == "type":
            return f"<type>{args['ref']} {args['text']}</type>"
        return f"<{name}>{next(iter(args.values()))}</{name}>"

    def format_hint(self) -> str:
        return (f"Reply with one action: {self._example('click', ref=4)}, {self._example('type', ref=5, text='hi')} "
                f"or {self._example('press', key='Enter')}.")

    def system_prompt(self) -> str:
        return ("Do the task on the web page. Elements are listed as [ref] tag \"text\" (left,top size). Actions: "
                "click(ref) clicks an element; type(ref, text) sets a field to text; press(key) presses a key.\n"
                + self.format_hint())

    # ------------------------------------------------------------------ browser
    @property
    def browser(self):
        """The MiniWoB environment (its Chromium starts on first use)."""
        if "browser" not in self._holder:
            self._holder["browser"] = _open_browser(self.task.options["task"], self.time_limit_ms)
        return self._holder["browser"]

    def close(self) -> None:
        _quit(self._holder)
        super().close()

    def on_reset(self) -> None:
        browser = self.browser
        browser.goto(self.task.options["task"])
        browser.set_record_screenshots(self.screenshot_dir is not None)
        obs, _ = browser.reset(seed=int(self.task.options["seed"]))
        self._episode, self.raw_reward = self._episode + 1, None
        self._observe(obs)
        self.prompt = sanitize(self.page)  # ToolEnv.reset reads the prompt after on_reset: the first page

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[str, dict]:
        obs, info = super().reset(seed=seed, options=options)
        info["screenshot"] = self.screenshot
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self.screenshot = None
        out = super().step(action)
        out[4]["screenshot"] = self.screenshot
        return out

    def _observe(self, obs: dict) -> None:
        self.utterance = str(obs["utterance"])
        self.elements = list(obs["dom_elements"])
        self.page = render_page(self.utterance, self.elements)
        if self.screenshot_dir is not None:
            from PIL import Image

            os.makedirs(self.screenshot_dir, exist_ok=True)
            name = f"{os.getpid()}_{id(self):x}_{self._episode:05d}_{self.turn:02d}.png"
            path = os.path.join(self.screenshot_dir, name)
            Image.fromarray(np.asarray(obs["screenshot"], dtype=np.uint8)).save(path)
            self.screenshot = path

    def _act(self, action_type: str, **fields: Any) -> str:
        """One MiniWoB action; returns the new page, or the end-of-episode text."""
        browser = self.browser
        config = browser.action_space_config
        action = {"action_type": config.action_types.index(action_type), **fields}
        obs, _, done, _, meta = browser.step(action)
        if done:
            self.raw_reward = float(meta.get("raw_reward") or 0.0)
            self.elements, self.page = [], ""
            return self._end_text()
        self._observe(obs)
        return self.page

    def _element(self, ref: int) -> dict:
        if self.raw_reward is not None:
            raise RuntimeError("the page already ended the episode")
        for e in self.elements:
            if int(e["ref"]) == ref and ref > 0:
                return e
        refs = [int(e["ref"]) for e in self.elements if int(e["ref"]) > 0]
        hint = f"refs on the page: {min(refs)}-{max(refs)}" if refs else "the page has no elements"
        raise ValueError(f"no element with ref {ref} ({hint}; text fragments without a ref cannot be clicked)")

    # ------------------------------------------------------------------ tools
    def click(self, ref: int) -> str:
        """Click a page element and return the new page.

        Args:
            ref: the element's number, shown as [ref] on the page.
        """
        self._element(ref)
        return self._act("CLICK_ELEMENT", ref=ref)

    def type(self, ref: int, text: str) -> str:
        """Set a text field: click it, replace its content by typing text, and return the new page.

        Args:
            ref: the field's number, shown as [ref] on the page.
            text: the text to type.
        """
        e = self._element(ref)
        if not isinstance(text, str) or len(text) > 256:
            raise ValueError("text must be a string of at most 256 characters")
        if str(e["value"]) and _is_text_field(str(e["tag"])):
            self._act("CLICK_ELEMENT", ref=ref)  # select the old content so that typing replaces it
            if self.raw_reward is None:
                self._act("PRESS_KEY", key=_key_index()["C-a"])
            return self._end_text() if self.raw_reward is not None else self._act("TYPE_TEXT", text=text)
        return self._act("FOCUS_ELEMENT_AND_TYPE_TEXT", ref=ref, text=text)

    def press(self, key: str) -> str:
        """Press a key (Enter, Tab, Backspace, Escape, ArrowDown, ..., a character; ctrl+a style combinations).

        Args:
            key: the key, e.g. Enter or ctrl+a.
        """
        if self.raw_reward is not None:
            raise RuntimeError("the page already ended the episode")
        return self._act("PRESS_KEY", key=_key_index()[normalize_key(key)])

    def _end_text(self) -> str:
        verdict = "success" if self.raw_reward > 0 else "failure"
        return f"The page ended the episode: {verdict} (raw reward {self.raw_reward:g})."

    # ------------------------------------------------------------------ episode
    def anchor(self) -> str:
        """The page (instruction + DOM), without history: equal pages give equal anchors."""
        return self.page

    def validate_action(self, parsed: ParsedAction) -> Optional[str]:
        if parsed.answer is not None:
            return "there is no <answer> here; act on the page"
        if len(parsed.tool_calls) != 1:
            return f"one action per reply (got {len(parsed.tool_calls)})"
        return None

    def episode_outcome(self) -> Optional[tuple[float, bool]]:
        if self.raw_reward is None:
            return None
        return (1.0, True) if self.raw_reward > 0 else (0.0, False)

    def score_answer(self, answer: str) -> tuple[float, bool]:
        return 0.0, False  # never called: validate_action rejects answers

    # ------------------------------------------------------------------ demonstrations
    def expert_action(self) -> str:
        """The next action of a scripted solver (curated tasks only) that reads the instruction and the DOM."""
        name = self.task.options["task"]
        if name not in EXPERTS:
            raise NotImplementedError(f"no expert for MiniWoB task {name!r}; experts exist for: {', '.join(CURATED)}")
        tool, args = EXPERTS[name](self.utterance, self.elements)
        return self._example(tool, **args)

    def corrupt_action(self, rng: np.random.Generator) -> str:
        """A well-formed but (usually) wrong action: a click on a random element other than the expert's target."""
        refs = [int(e["ref"]) for e in self.elements if int(e["ref"]) > 0]
        expert = self.expert_action()
        wrong = [r for r in refs if self._example("click", ref=r) != expert] or refs or [1]
        return self._example("click", ref=wrong[int(rng.integers(len(wrong)))])
