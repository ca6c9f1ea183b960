"""Date and time formats for English: times to the second, dates year first, as the job pages
and logs print them (a retry's backoff is seconds long; "4:41 p.m." hides it)."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
