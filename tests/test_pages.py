"""End to end in real headless Chromium: student phone page → WebRTC → monitor page."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.browser import DESKTOP, PHONE, Tab, open_tab

# One Chromium serves the session (conftest `browser`): tests run on its event loop.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

ARTIFACTS = Path(os.environ.get("RTCPROCTOR_TEST_ARTIFACTS", "test-artifacts"))


async def live_student(browser, server, code: str, viewport=PHONE, prepare=None) -> Tab:
    tab = await open_tab(browser, f"{server.url}/student#code={code}", viewport, prepare)
    await tab.page.wait_for_function("() => window.rtcproctor?.state === 'joined'")
    await tab.page.click("#go-live")
    await tab.page.wait_for_function("() => window.rtcproctor.state === 'live'")
    return tab


async def monitor(browser, server, students, key: str | None = None, prepare=None) -> Tab:
    url = f"{server.url}/monitor" + (f"#key={key}" if key else "")
    tab = await open_tab(browser, url, prepare=prepare)
    await tab.page.fill("#roster-input", "\n".join(f"{name},{code}" for name, code in students))
    await tab.page.click("#next-button")
    try:
        await tab.page.wait_for_selector("#board:not([hidden])")
    except PlaywrightTimeout:
        said = await tab.page.locator("#watch-error, #watch-results").all_inner_texts()
        raise AssertionError(f"the board did not open: {said} {tab.problems()}") from None
    return tab


async def student_chat(tab: Tab, text: str) -> None:
    """Type a chat message as a student would (opening the collapsed panel on a phone)."""
    if await tab.page.get_attribute("#chat-toggle", "aria-expanded") != "true":
        await tab.page.click("#chat-toggle")
    await tab.page.fill("#chat-input", text)
    await tab.page.press("#chat-input", "Enter")


def norm(code: str) -> str:
    return code.replace("-", "")


async def video_playing(tab: Tab, code: str, within: float = 40_000) -> None:
    """The tile's video has frames and its time advances (generous: CI machines are loaded)."""
    script = """([code, after]) => {
        const t = window.rtcproctor.tiles.get(code);
        return t && t.video.videoWidth > 0 && t.video.currentTime > after;
    }"""
    await tab.page.wait_for_function(script, arg=[norm(code), 0], timeout=within)
    now = await tab.page.evaluate(
        "(code) => window.rtcproctor.tiles.get(code).video.currentTime", norm(code)
    )
    await tab.page.wait_for_function(script, arg=[norm(code), now + 0.5], timeout=within)


async def tile_state(tab: Tab, code: str, state: str, within: float = 20_000) -> None:
    await tab.page.wait_for_function(
        "([code, state]) => window.rtcproctor.tiles.get(code)?.state === state",
        arg=[norm(code), state],
        timeout=within,
    )


async def shot(tab: Tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await tab.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def clean(tab: Tab) -> list[str]:
    return [p for p in tab.problems() if "ERR_CONNECTION_REFUSED" not in p]


async def test_video_chat_and_attention_between_phone_and_monitor(server, browser):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await live_student(browser, server, code)
    proctor = await monitor(browser, server, [("Ann Lee", code)], key=exam["proctor_key"])
    await video_playing(proctor, code)
    await shot(student, "student-phone-live")
    await shot(proctor, "monitor-desktop-grid")

    # Student → proctor chat, with markup that must stay text.
    payload = '<img src=x onerror="document.title=1">hello'
    await student_chat(student, payload)
    await proctor.page.wait_for_function(
        "(code) => window.rtcproctor.tiles.get(code).unread > 0", arg=norm(code)
    )
    await proctor.page.locator(".tile-button", has_text="Ann Lee").click()
    await proctor.page.wait_for_selector("#large-view[open]")
    chat = proctor.page.locator("#lv-chat-list")
    await chat.get_by_text(payload).wait_for()
    assert await chat.locator("img").count() == 0

    # Proctor → student chat and attention.
    await proctor.page.fill("#lv-chat-input", "Please face the camera")
    await proctor.page.press("#lv-chat-input", "Enter")
    await student.page.locator("#chat-list").get_by_text("Please face the camera").wait_for()
    await proctor.page.click("#lv-attention")
    await student.page.wait_for_selector("#attention-banner:not([hidden])")
    await shot(proctor, "monitor-desktop-large-view")

    # Student → proctor attention: a badge on the tile and a notification.
    await proctor.page.click("#lv-close")
    await student.page.click("#attention-dismiss")
    await student.page.click("#raise-attention")
    await proctor.page.wait_for_function(
        "(code) => window.rtcproctor.tiles.get(code).attention.size > 0", arg=norm(code)
    )
    await proctor.page.locator("#notifications li").first.wait_for()
    await shot(student, "student-phone-chat")
    assert clean(student) == [] and clean(proctor) == []


async def test_two_proctors_watch_one_student_and_leaving_does_not_interrupt(server, browser):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    await live_student(browser, server, code)
    first = await monitor(browser, server, [("Ann", code)])
    second = await monitor(browser, server, [("Ann", code)])
    await video_playing(first, code)
    await video_playing(second, code)
    await second.page.context.close()
    await video_playing(first, code)


async def test_student_network_drop_and_return_brings_the_tile_back(server, browser):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await live_student(browser, server, code)
    proctor = await monitor(browser, server, [("Ann", code)])
    await video_playing(proctor, code)
    await student.page.context.set_offline(True)
    await tile_state(proctor, code, "offline", within=40_000)
    await student.page.context.set_offline(False)
    await tile_state(proctor, code, "live", within=40_000)
    await video_playing(proctor, code, within=40_000)


async def test_an_offer_lost_on_the_wire_is_asked_for_again(server, browser):
    """The student's offer to the monitor never reaches the server: nothing fails by itself,
    so the monitor, seeing a live student it has no connection to, asks for a fresh peer."""
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    armed, dropped = [False], []

    async def drop_one_offer(page) -> None:
        def route(ws) -> None:
            upstream = ws.connect_to_server()

            def to_server(message) -> None:
                if armed[0] and '"signal"' in str(message) and '"offer"' in str(message):
                    armed[0] = False
                    dropped.append(message)
                    return
                upstream.send(message)

            ws.on_message(to_server)

        await page.route_web_socket(re.compile(r"/socket\.io/"), route)

    await live_student(browser, server, code, prepare=drop_one_offer)
    armed[0] = True
    proctor = await monitor(browser, server, [("Ann", code)])
    await video_playing(proctor, code, within=60_000)
    assert dropped and not armed[0]
    assert any("asking for a fresh one" in line for line in proctor.console)


async def test_an_offer_that_beats_the_watch_answer_waits_for_its_tile(server, browser):
    """The server asks the live student for a peer while it still answers the watch request,
    so a busy server's answer can reach the monitor after the offer it caused: the offer
    waits for its tile instead of being lost (here the answer is held until the offer passed)."""
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    await live_student(browser, server, code)
    held, offered, delayed = [], [], []

    async def answer_after_offer(page) -> None:
        def route(ws) -> None:
            upstream = ws.connect_to_server()

            def release() -> None:
                while held:
                    ws.send(held.pop(0))

            def to_page(message) -> None:
                text = str(message)
                if text.startswith("43") and '"students"' in text and not offered:
                    held.append(message)
                    delayed.append(text)
                    asyncio.get_running_loop().call_later(10, release)
                    return
                ws.send(message)
                if '"signal"' in text and '"offer"' in text:
                    offered.append(text)
                    release()

            upstream.on_message(to_page)

        await page.route_web_socket(re.compile(r"/socket\.io/"), route)

    proctor = await monitor(browser, server, [("Ann", code)], prepare=answer_after_offer)
    await video_playing(proctor, code)
    assert delayed and offered and not held
    assert not any("asking for a fresh one" in line for line in proctor.console)


async def test_a_monitor_with_the_key_opens_a_full_list_of_students(server, browser):
    """500 students (the most one page watches) with the proctor key: their histories come in
    one answer, well inside the page's call timeout, and the live one's video plays."""
    exam = server.codes(*[f"Student {i}" for i in range(500)])
    students = [(s["name"], s["code"]) for s in exam["students"]]
    code = students[-1][1]
    student = await live_student(browser, server, code)
    await student_chat(student, "hello from the last row")
    await student.page.locator("#chat-list").get_by_text("hello from the last row").wait_for()
    proctor = await monitor(browser, server, students, key=exam["proctor_key"])
    assert await proctor.page.evaluate("() => window.rtcproctor.tiles.size") == 500
    await video_playing(proctor, code)
    chat = "(code) => window.rtcproctor.tiles.get(code).chat.size"
    assert await proctor.page.evaluate(chat, norm(code)) == 1


async def test_pages_reconnect_by_themselves_after_a_server_restart(server, browser):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await live_student(browser, server, code)
    proctor = await monitor(browser, server, [("Ann", code)])
    await video_playing(proctor, code)
    server.stop()
    await proctor.page.wait_for_function("() => !window.rtcproctor.socketConnected")
    server.start()
    await tile_state(proctor, code, "live", within=40_000)
    await video_playing(proctor, code, within=40_000)
    await student.page.wait_for_function("() => window.rtcproctor.state === 'live'")


async def test_a_page_with_one_code_never_sees_another(server, browser):
    exam = server.codes("Ann", "Bob")
    ann, bob = (s["code"] for s in exam["students"])
    bob_page = await live_student(browser, server, bob)
    await student_chat(bob_page, "bob's private message")
    await bob_page.page.locator("#chat-list").get_by_text("bob's private message").wait_for()
    proctor = await monitor(browser, server, [("Ann", ann)])
    await tile_state(proctor, ann, "offline")
    await live_student(browser, server, ann)
    await video_playing(proctor, ann)
    tiles = await proctor.page.evaluate("() => [...window.rtcproctor.tiles.keys()]")
    assert tiles == [norm(ann)]
    text = await proctor.page.content()
    assert norm(bob) not in text.replace("-", "") and "private message" not in text
    assert "Student 2" not in text


async def test_second_device_takes_over_and_the_first_is_told(server, browser):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    old = await live_student(browser, server, code)
    proctor = await monitor(browser, server, [("Ann", code)])
    await video_playing(proctor, code)
    await live_student(browser, server, code)
    await old.page.wait_for_function("() => window.rtcproctor.state === 'replaced'")
    await old.page.wait_for_selector("#replaced-section:not([hidden])")
    assert await old.page.evaluate("() => window.rtcproctor.peers.size") == 0
    await video_playing(proctor, code)


async def test_monitor_generates_codes_and_reports_bad_lines(server, browser):
    tab = await open_tab(browser, f"{server.url}/monitor", PHONE)
    await tab.page.fill("#roster-input", "Ann,\nthis line has no code\n\nBob\tSHORT")
    await tab.page.click("#next-button")
    problems = tab.page.locator("#roster-problems")
    await problems.get_by_text("1").first.wait_for()
    assert "2" in await problems.inner_text()
    await tab.page.click("#generate-link")
    await tab.page.fill("#names-input", "Ann Lee\nBob Stone")
    await tab.page.click("#generate-button")
    await tab.page.wait_for_selector("#generate-result:not([hidden])")
    key = (await tab.page.inner_text("#generated-key")).strip()
    assert len(key) >= 22
    href = await tab.page.get_attribute("#csv-link", "href")
    assert href and href.startswith("blob:")
    await shot(tab, "monitor-phone-generated")
    await tab.page.click("#monitor-generated")
    await tab.page.wait_for_selector("#board:not([hidden])")
    assert await tab.page.evaluate("() => window.rtcproctor.tiles.size") == 2
    await tab.page.set_viewport_size(DESKTOP)
    await shot(tab, "monitor-desktop-two-offline")
