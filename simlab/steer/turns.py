"""The user turns `steer derive` asks both personas when none are given (with each persona's own
`sample_turn`): questions any interviewee, narrator or character can answer in their own voice."""

TURNS = (
    "Tell me about yourself.",
    "What did you do yesterday?",
    "What is the hardest thing you have ever done?",
    "Describe the place where you are right now.",
    "What do you think of strangers?",
    "What happened the last time you were afraid?",
    "What would you change about your life?",
    "Tell me about someone you miss.",
)
