"""Presentation: failure text (:mod:`.failure`) and the terminal summary (:mod:`.terminal`)."""
