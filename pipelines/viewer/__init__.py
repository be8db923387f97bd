"""Looking at what a campaign learned: dreams beside reality (``iris dream``), a campaign report
(``iris report``) and interactive play (``iris play``). See docs/viewing.md."""
