/* One foreground job through libgearman's C client, to every server given:
 *   submit SERVERS TASK PAYLOAD    (SERVERS: host:port[,host:port...])
 * Prints the result; exit 1 with libgearman's error on failure. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVERS TASK PAYLOAD\n", argv[0]);
    return 2;
  }
  gearman_client_st *client = gearman_client_create(NULL);
  if (client == NULL || gearman_client_add_servers(client, argv[1]) != GEARMAN_SUCCESS) {
    fprintf(stderr, "cannot set up the client\n");
    return 2;
  }
  gearman_client_set_timeout(client, 10000);
  size_t size = 0;
  gearman_return_t ret;
  void *result = gearman_client_do(client, argv[2], NULL, argv[3], strlen(argv[3]), &size, &ret);
  if (ret != GEARMAN_SUCCESS) {
    fprintf(stderr, "%s\n", gearman_client_error(client));
    gearman_client_free(client);
    return 1;
  }
  fwrite(result, 1, size, stdout);
  free(result);
  gearman_client_free(client);
  return 0;
}
