"""The playground in real headless Chromium (Debian's), driven by selenium: draw a stroke and see probabilities,
turn on explain and see the overlay (for a chosen class and method), click generate and see the grid load, watch a
language model's completion stream and a text classifier's answer with its coloured characters.
Screenshots are kept in build/test-artifacts/."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from genforge.explain import METHODS

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Session-scoped so that a missing Chromium is found before the session's models train for the server."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,1400",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_draw_then_classify_and_generate_a_grid(browser, live_server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "classifier").get_attribute("value"))
    pad = browser.find_element(By.ID, "pad")
    ActionChains(browser).move_to_element_with_offset(pad, -60, -90).click_and_hold() \
        .move_by_offset(0, 60).move_by_offset(0, 60).move_by_offset(10, 60).release().perform()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars li")) == 10)
    shares = [float(li.get_attribute("aria-label").split()[-2])  # "<class> <share> percent"
              for li in browser.find_elements(By.CSS_SELECTOR, "#bars li")]
    assert abs(sum(shares) - 100) < 1.5  # ten probabilities that add up
    assert browser.find_element(By.ID, "latency").text.startswith("answered by onnxruntime in ")  # the default backend

    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.execute_script(
        "const g = document.getElementById('grid'); return !g.hidden && g.complete && g.naturalWidth > 0"))
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert browser.find_element(By.ID, "grid-info").text.startswith("answered by onnxruntime in ")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground.png"))


def test_the_explain_toggle_overlays_the_attributions_as_one_draws(browser, live_server):
    """The classifier is served by onnxruntime (the default backend); its explanations come from its torch weights."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "explain-box").is_displayed())
    pad, overlay = browser.find_element(By.ID, "pad"), browser.find_element(By.ID, "overlay")
    answers = lambda d: int(overlay.get_attribute("data-answers") or 0)  # noqa: E731 - overlays drawn so far
    ActionChains(browser).move_to_element_with_offset(pad, -40, -90).click_and_hold().move_by_offset(0, 90) \
        .move_by_offset(0, 90).release().perform()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars li")) == 10)
    assert not overlay.is_displayed()  # off until asked for
    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: overlay.is_displayed() and answers(d) >= 1)
    predicted = browser.find_element(By.CSS_SELECTOR, "#bars li.top span").text
    assert browser.find_element(By.ID, "overlay-info").text.startswith(f"{predicted}: red towards, blue away")
    red, blue = browser.execute_script("""
        const d = document.getElementById('overlay').getContext('2d').getImageData(0, 0, 112, 112).data;
        let red = 0, blue = 0;
        for (let i = 0; i < d.length; i += 4) { red += d[i] > d[i + 2] + 60; blue += d[i + 2] > d[i] + 60; }
        return [red, blue];""")
    assert red + blue > 50  # coloured pixels, not the gray input alone

    seen = answers(browser)
    ActionChains(browser).move_to_element_with_offset(pad, 40, -90).click_and_hold().move_by_offset(0, 150) \
        .release().perform()  # a second stroke: the overlay follows
    wait.until(lambda d: answers(d) > seen)
    Select(browser.find_element(By.ID, "explain-target")).select_by_visible_text("Sandal")
    wait.until(lambda d: d.find_element(By.ID, "overlay-info").text.startswith("Sandal: "))
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert "answered by torch in " in browser.find_element(By.ID, "overlay-info").text  # gradients: torch's
    methods = Select(browser.find_element(By.ID, "explain-method"))
    assert [o.get_attribute("value") for o in methods.options][1:] == list(METHODS)  # the server's, in its order
    methods.select_by_visible_text("integrated-gradients")
    wait.until(lambda d: "(integrated-gradients)" in d.find_element(By.ID, "overlay-info").text)
    assert browser.find_element(By.ID, "overlay-info").text.startswith("Sandal: ")  # the chosen class stays
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground-explain.png"))


def test_the_page_shows_the_servers_error_messages(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "generator").get_attribute("value"))
    browser.find_element(By.ID, "count").clear()
    browser.find_element(By.ID, "count").send_keys("5000")  # over the server's limit of 256
    browser.find_element(By.ID, "go").click()
    error = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error") if d.find_element(
        By.ID, "error").is_displayed() else None)
    assert "n" in error.text and "256" in error.text


@contextmanager
def torch_server(runs):
    """`genforge serve` of these runs alone (torch: no ONNX export at start); its URL."""
    from helpers import start_server

    proc, url = start_server(runs, "--backend", "torch")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def forecast_server(forecast_runs):
    with torch_server(forecast_runs) as url:  # the two forecasters only
        yield url


def test_the_forecast_panel_plots_a_series_and_its_forecast(browser, forecast_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(forecast_server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#series option"))  # the model's own series, plotted
    assert browser.find_element(By.ID, "classify").get_attribute("hidden") is not None  # no classifier served
    assert browser.find_element(By.CSS_SELECTOR, "#chart path.history").get_attribute("d").count("L") == 99
    browser.find_element(By.ID, "horizon").clear()
    browser.find_element(By.ID, "horizon").send_keys("12")  # beyond the trained 6: recursive
    browser.find_element(By.ID, "predict").click()
    median = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart path.median"))[0]
    assert median.get_attribute("d").count("L") == 12  # from the last value through 12 forecast steps
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart path.band-80, #chart path.band-95")) == 2
    assert "12 steps (steps beyond the trained 6" in browser.find_element(By.ID, "forecast-info").text
    assert "context 24 · horizon 6" in browser.find_element(By.ID, "card-list").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground-forecast.png"))


@pytest.fixture(scope="module")
def text_server(text_run, text_classifier_run):
    with torch_server([text_run, text_classifier_run]) as url:  # a language model and a text classifier
        yield url


def test_the_text_panel_streams_a_completion_and_colours_a_classified_sentence(browser, text_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(text_server + "/")
    models = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#text-model option"))
    assert [o.text.split(" (")[1] for o in models] == ["language model)", "text classifier)"]
    assert browser.find_element(By.ID, "classify").get_attribute("hidden") is not None  # no image classifier
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("40")
    browser.find_element(By.ID, "text-go").click()
    wait.until(lambda d: d.find_element(By.ID, "completion").get_attribute("data-done") == "1")
    added = browser.find_element(By.CSS_SELECTOR, "#completion b").text
    assert browser.find_element(By.ID, "completion").text.startswith("A computer") and added
    info = browser.find_element(By.ID, "text-info").text
    assert " pieces in " in info and "the first after" in info, info

    Select(browser.find_element(By.ID, "text-model")).select_by_index(1)
    assert browser.find_element(By.ID, "text-go").text == "Classify"
    assert not browser.find_element(By.ID, "temperature").is_displayed()  # generation's options are hidden
    sentence = "Love is blind."
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys(sentence)
    browser.find_element(By.ID, "text-go").click()
    wait.until(lambda d: d.find_element(By.ID, "why").get_attribute("data-answers") == "1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#text-bars li")) == 10
    for part in ("why-ig", "why-rollout"):
        spans = browser.find_elements(By.CSS_SELECTOR, f"#{part} span")
        assert "".join(s.text or " " for s in spans) == sentence  # a space's span has no visible text
        assert len({s.get_attribute("style") for s in spans}) > 1  # coloured by value, not all alike
    assert "explained " in browser.find_element(By.ID, "text-info").text
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground-text.png"))
