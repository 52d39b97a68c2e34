"""Steering tasks, not only pools (issue 23): pause and resume a task,
cancel one job, cap a task's concurrency and start rate across the fleet.

- switchboard.py: the shared memory in which the master tells each child
  which tasks to withhold from gearmand and which job to give up;
- offers.py: the child's side, the CANT_DO and CAN_DO it sends;
- steering.py: the master's side, who withholds what and why;
- tokens.py: the fleet-wide concurrency tokens and start permits in Redis;
- governor.py: the master's thread that holds them for its children.
The control commands are control/pause.py and control/cancel.py.
"""
