/* C libgearman echo worker: the ceiling our pool is measured against. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *echo(gearman_job_st *job, void *context, size_t *size, gearman_return_t *ret)
{
  (void)context;
  size_t n = gearman_job_workload_size(job);
  void *copy = malloc(n ? n : 1);
  if (copy == NULL) { *ret = GEARMAN_WORK_FAIL; return NULL; }
  memcpy(copy, gearman_job_workload(job), n);
  *size = n;
  *ret = GEARMAN_SUCCESS;
  return copy;
}

int main(int argc, char **argv)
{
  if (argc != 3 && argc != 4) { fprintf(stderr, "usage: %s HOST PORT [FUNCTION]\n", argv[0]); return 2; }
  const char *function = argc == 4 ? argv[3] : "echo";
  gearman_worker_st *worker = gearman_worker_create(NULL);
  if (worker == NULL) return 1;
  if (gearman_worker_add_server(worker, argv[1], (in_port_t)atoi(argv[2])) != GEARMAN_SUCCESS
      || gearman_worker_add_function(worker, function, 0, echo, NULL) != GEARMAN_SUCCESS) {
    fprintf(stderr, "%s\n", gearman_worker_error(worker));
    return 1;
  }
  for (;;) {
    if (gearman_worker_work(worker) != GEARMAN_SUCCESS) {
      fprintf(stderr, "%s\n", gearman_worker_error(worker));
      return 1;
    }
  }
}
