"""The prompting page: prompt building, decoding settings, the next-token explorer, in-context learning measured."""
