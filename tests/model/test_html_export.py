"""`simlab sessions export NAME --format html`: one self-contained page, opened in a real headless
Chromium (Debian's chromium and chromium-driver, through selenium): no console errors, every visible
node in the tree, a click shows that node's path, its tokens carry their alternatives."""

import io
import json
import re
import shutil

import pytest
from conftest import run_cli

from simlab.persona.schema import Persona
from simlab.trace.config import TraceConfig
from simlab.trace.record import Tracer
from simlab.turns import sample_replies, start_session

PERSONA = Persona(name="duo", frame="Two talk </script> <b>here</b>.\n\n", user="Ann", model="Bo")


def chromium():
    """A headless Chromium driven by selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "Chromium is not installed here: apt-get install chromium chromium-driver (make test does)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def exported(tmp_path, store, tiny_engine, capsys):
    session = start_session(store, PERSONA, "shared")
    user = session.add_child(session.tree.cursor, "user", "What is <this> & that?", speaker="Ann")
    params = PERSONA.sampling_params(seed=4, max_new_tokens=8)
    tracer = Tracer(TraceConfig(dtype="float32"), say=lambda text: None)
    first, second, third = sample_replies(tiny_engine, session, user.id, params, 3, tracer=tracer)
    session.set_tag(first.id, "bookmark")
    session.set_tag(second.id, "canonical")
    session.set_hidden(third.id)
    session.goto(first.id)
    session.close()
    page = tmp_path / "shared.html"
    folder = str(store.folder)
    argv = ["sessions", "export", "shared", "--format", "html", "-o", str(page), "--sessions-dir", folder]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return page, {"user": user, "first": first, "second": second, "third": third}


def test_the_page_needs_nothing_from_the_network_and_escapes_the_session(exported):
    page, _ = exported
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert "<b>here</b>" not in html and "</script> <b>" not in html  # the frame's text is data only
    data = json.loads(re.search(r'id="data">(.*?)</script>', html, re.S).group(1))
    assert len(data["nodes"]) == 5 and sum(n["heatmap"] is not None for n in data["nodes"]) == 3


def test_chromium_renders_the_tree_and_a_click_shows_the_path(exported):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page, nodes = exported
    browser = chromium()
    try:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        links = browser.find_elements(By.CSS_SELECTOR, "nav a")
        assert len(links) == 4  # frame, user, two visible replies; the hidden one left out
        assert "★" in links[2].text and "✓" in links[3].text
        text = browser.find_element(By.ID, "text").text
        assert text.startswith("Two talk </script> <b>here</b>.") and "Ann: What is <this> & that?" in text
        assert nodes["first"].text in text and browser.current_url.endswith("#" + nodes["first"].id)

        links[3].click()  # the second reply
        text = browser.find_element(By.ID, "text").text
        assert text.endswith("Bo: " + nodes["second"].text.rstrip()) or nodes["second"].text in text
        assert nodes["first"].text not in text or nodes["first"].text in nodes["second"].text
        assert browser.current_url.endswith("#" + nodes["second"].id)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#siblings div")) == 2
        meta = browser.find_element(By.ID, "meta").text
        assert "seed 5" in meta and "finish reason" in meta
        assert browser.find_elements(By.CSS_SELECTOR, "#heatmap td")

        token = browser.find_elements(By.CSS_SELECTOR, "#text .current .tok[data-alts]")[0]
        ActionChains(browser).move_to_element(token).perform()
        tip = browser.find_element(By.ID, "tip")
        assert tip.is_displayed() and tip.text.startswith("p = ")

        browser.find_element(By.ID, "show-hidden").click()
        assert len(browser.find_elements(By.CSS_SELECTOR, "nav a")) == 5
        assert browser.find_elements(By.CSS_SELECTOR, "nav a.hidden")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()


def test_each_nodes_framing_comes_from_one_walk_as_its_path_gives_it(store, fake_engine):
    """The page reads each node's framing from one walk down the tree (a path per node was
    O(nodes x depth)): the same framing as its own path gives, for a chat and a document."""
    from simlab.frame.render import framing_of
    from simlab.persona.schema import Persona
    from simlab.repl.screen import LineView
    from simlab.repl.state import Chat
    from simlab.session.html import _framings
    from simlab.turns import start_session

    for persona in (
        Persona(name="duo", frame="Two people talk.\n\n", user="Ann", model="Bo"),
        Persona(name="document", frame="The lamp", mode="document"),
    ):
        session = start_session(store, persona, persona.name)
        chat = Chat(
            fake_engine, store, session, persona, persona.sampling_params(seed=1), LineView(io.StringIO())
        )
        chat.reply(session.tree.cursor, n=2)
        tree = session.tree
        walked = _framings(tree)
        assert set(walked) == set(tree.nodes)
        for node_id in tree.nodes:
            assert walked[node_id] == framing_of(tree.path(node_id))


def test_the_multiverse_is_drawn_as_nested_rectangles_that_zoom(tmp_path, store, tiny_engine, capsys):
    from selenium.webdriver.common.by import By

    from simlab.engine.params import SamplingParams
    from simlab.session import multiverse as sm
    from simlab.turns.multiverse import grow_at, keep

    session = start_session(store, PERSONA, "mv")
    user = session.add_child(session.tree.cursor, "user", "Where <is> the keeper?", speaker="Ann")
    saved = grow_at(tiny_engine, session, user.id, SamplingParams(temperature=0.5, top_k=5), 3, 0.02)
    kept = keep(tiny_engine, session, saved, sm.rows(sm.tree(saved))[0].ids)
    session.goto(user.id)
    session.close()
    page = tmp_path / "mv.html"
    argv = ["sessions", "export", "mv", "--format", "html", "-o", page, "--sessions-dir", store.folder]
    assert run_cli(capsys, *argv)[0] == 0
    blocks = sm.rows(sm.tree(saved))
    browser = chromium()
    try:
        browser.get(page.as_uri())
        drawn = browser.find_elements(By.CSS_SELECTOR, "#mv-box .mvb")
        assert len(drawn) == len(blocks)
        stage = browser.find_element(By.ID, "mv-box").size["height"] - 2  # (its border)
        for element, block in zip(drawn, blocks):  # depth first, most probable first, as the terminal
            assert float(element.get_attribute("data-share")) == pytest.approx(block.p, rel=1e-9)
            assert element.rect["height"] == pytest.approx(block.p * stage, abs=1.5)
            assert json.dumps(block.text, ensure_ascii=False) in element.get_attribute("textContent")
            assert element.get_attribute("title").startswith(block.text_from_root() + " · ")  # (its path)
        covered = browser.find_element(By.ID, "mv-covered").text
        assert (
            covered.startswith(f"covers {100 * saved['covered'][0]:.1f}% at depth 1")
            and "cutoff 0.02" in covered
        )
        # a click on a block with continuations zooms into it: they fill the height, renormalised
        k, first = next((k, b) for k, b in enumerate(blocks) if b.children)
        drawn[k].click()
        zoomed = browser.find_elements(By.CSS_SELECTOR, "#mv-box .mvb")
        inside = sm.rows(first)
        assert len(zoomed) == len(inside)
        for element, block in zip(zoomed, inside):
            assert float(element.get_attribute("data-share")) == pytest.approx(block.p / first.p, rel=1e-9)
        crumbs = browser.find_element(By.ID, "mv-crumbs").text
        assert (
            crumbs.startswith("the whole multiverse ▸ ")
            and " of " in browser.find_element(By.ID, "mv-covered").text
        )
        browser.find_element(By.CSS_SELECTOR, "#mv-crumbs a").click()  # back out
        [marked] = [a for a in browser.find_elements(By.CSS_SELECTOR, "nav a") if "◆" in a.text]
        assert marked.get_attribute("data-id") == kept.id  # (the kept block, marked as in the terminal)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#mv-box .mvb")) == len(blocks)
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
