// A java.net server with default settings: ServerSocket binds the dual-stack wildcard (an
// AF_INET6 socket on ::), so IPv4 overlay peers arrive as v4-mapped addresses. One line in,
// one line out: "<line> from <peer address> at <local address> on <hostname>".
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;

public class EchoServer {
    public static void main(String[] args) throws Exception {
        ServerSocket server = new ServerSocket(Integer.parseInt(args[0]));
        String host = InetAddress.getLocalHost().getHostName();
        while (true) {
            Socket s = server.accept();
            new Thread(() -> {
                try (s) {
                    BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream()));
                    PrintWriter out = new PrintWriter(s.getOutputStream(), true);
                    String line = in.readLine();
                    out.println(line + " from " + s.getInetAddress().getHostAddress() + " at "
                                + s.getLocalAddress().getHostAddress() + " on " + host);
                } catch (Exception e) {
                    e.printStackTrace();
                }
            }).start();
        }
    }
}
