//! Headless Chromium through chromedriver.
