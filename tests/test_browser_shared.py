"""tests/browser.py's one Chromium per module: a browser that went away (a test cut short inside a Playwright call
closed it) is started again for the module's next page, not 35 failures on a closed browser."""
from __future__ import annotations

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture

pytestmark = IN_ONE_CHROMIUM


async def test_the_modules_chromium_goes_away(one_chromium):
    await one_chromium.close()
    assert not one_chromium.is_connected()


async def test_the_next_page_opens_in_a_chromium_started_again():
    async with chromium_page() as page:
        await page.set_content("<p id=x>drawn</p>")
        assert await page.locator("#x").inner_text() == "drawn"
