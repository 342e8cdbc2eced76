"""Many images at once: project files (project), compose applications mapped onto build options
(compose), and a compose application's own package, NAME-stack, which starts them all (stack).
"""
