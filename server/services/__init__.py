"""Services: the domain logic shared by the API, the scheduler and the workers.

Routes and tasks stay thin; every query and every state transition lives here.
"""
