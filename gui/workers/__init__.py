"""Work off the GUI thread: QThread workers for tasks and chat, and the supervisor of the training child."""
