"""Why an utterance is left out, in the words report.json, the stream's report and the training log use.

prepare skips a corpus entry it cannot turn into a shard row: the audio reasons are ``xlsr_dist.audio``'s (its
decoder raises them, with the details), the others are here. The training stream skips a shard row that cannot
train under the run's settings (durations, vocabulary, the model's frame rate). The strings are what reports count
by, so they are part of report.json's format.
"""

# Either stage.
EMPTY_TRANSCRIPT = "empty transcript"
DUPLICATE_ID = "duplicate id"

# prepare: the corpus entry itself.
MALFORMED_ENTRY = "malformed entry"
TRANSCRIPT_TOO_DENSE = "transcript too long for audio"

# The training stream: this run's filters.
SHORTER_THAN_MIN = "shorter than --min_duration_in_seconds"
LONGER_THAN_MAX = "longer than --max_duration_in_seconds"
UNALIGNABLE = "unalignable: transcript needs more CTC frames than the audio gives"
