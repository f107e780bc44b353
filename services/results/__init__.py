"""The results service: material specifications and the test results judged against them."""
